import type { ReactNode } from 'react';

export const metadata = { title: 'balance-client on Next.js' };

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: 'system-ui, sans-serif', margin: 0, padding: 24, background: '#f6f7f9', color: '#101828' }}>{children}</body>
    </html>
  );
}
