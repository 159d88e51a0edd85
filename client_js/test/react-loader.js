// Module hook for react.test.js: `import 'react'` resolves to the stand-in.
export async function resolve(specifier, context, next) {
  if (specifier === 'react') return { url: new URL('./fake-react.js', import.meta.url).href, shortCircuit: true };
  return next(specifier, context);
}
