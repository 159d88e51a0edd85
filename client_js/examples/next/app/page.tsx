// A server component: it hands the client part where balance-server answers. The browser
// talks to balance-server directly (its BALANCE_ALLOWED_ORIGINS must name this app's
// origin); only the API routes below hold the service key.
import { Credits } from './credits';

// Read at request time, so one build serves any deployment.
export const dynamic = 'force-dynamic';

export default function Page() {
  return <Credits apiUrl={process.env.BALANCE_PUBLIC_URL ?? process.env.BALANCE_API_URL ?? 'http://127.0.0.1:8000'} />;
}
