// A jsdom window installed as the globals a browser page has, for tests that render
// elements or React in Node. Import it before anything that looks at HTMLElement.
import { JSDOM } from 'jsdom';

export const dom = new JSDOM('<!doctype html><html lang="en-US"><body></body></html>', { url: 'http://app.test/', pretendToBeVisual: true });
for (const name of ['window', 'document', 'navigator', 'location', 'HTMLElement', 'customElements', 'CustomEvent', 'Event', 'Node', 'Element', 'MutationObserver', 'requestAnimationFrame', 'cancelAnimationFrame', 'getComputedStyle']) {
  Object.defineProperty(globalThis, name, { value: dom.window[name], configurable: true, writable: true });
}
