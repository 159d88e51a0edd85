/** Expiry of a JWT in ms since the epoch (read, not verified), or null when it has none or is not a JWT. */
export function tokenExpiry(token: string): number | null;
