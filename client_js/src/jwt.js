// Reads a JWT's `exp` without verifying it: the client only needs to know when to
// fetch a fresh token; the server does all the checking.

/** Expiry of a JWT in ms since the epoch, or null when the token has none or is not a JWT. */
export function tokenExpiry(token) {
  const payload = typeof token === 'string' ? token.split('.')[1] : undefined;
  if (!payload) return null;
  try {
    const json = JSON.parse(decodeBase64Url(payload));
    return typeof json.exp === 'number' ? json.exp * 1000 : null;
  } catch {
    return null;
  }
}

function decodeBase64Url(s) {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(s.length / 4) * 4, '=');
  // atob exists in browsers and in Node >= 16; it yields bytes, so undo UTF-8 by hand.
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}
