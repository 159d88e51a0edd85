// Just enough React to drive one hook in Node: useState, useRef and useEffect with
// dependency arrays, effects run right after each render. React itself is not a
// dependency of this package, so the hook is tested against this stand-in, and the
// loader (react-loader.js) hands it out for `import ... from 'react'`.

let rendering = null;

export function renderHook(hook, props) {
  const host = { props, slots: [], cleanups: [], result: undefined, pending: [] };
  const render = () => {
    host.index = 0;
    rendering = host;
    host.result = hook(host.props);
    rendering = null;
    for (const run of host.pending.splice(0)) run();
  };
  render();
  return {
    get result() {
      return host.result;
    },
    rerender(newProps) {
      host.props = newProps;
      render();
    },
    unmount() {
      host.cleanups.forEach((c) => c?.());
      host.cleanups = [];
    },
    flush: render, // setState only stores; the test re-renders when it wants to look
    host,
  };
}

function slot(init) {
  const host = rendering;
  const i = host.index++;
  if (!(i in host.slots)) host.slots[i] = init();
  return [host, i];
}

export function useState(initial) {
  const [host, i] = slot(() => ({ value: initial }));
  const cell = host.slots[i];
  const set = (next) => {
    cell.value = typeof next === 'function' ? next(cell.value) : next;
  };
  return [cell.value, set];
}

export function useRef(initial) {
  const [host, i] = slot(() => ({ current: initial }));
  return host.slots[i];
}

export function useEffect(effect, deps) {
  const [host, i] = slot(() => ({ deps: undefined }));
  const cell = host.slots[i];
  const changed = !cell.deps || deps.length !== cell.deps.length || deps.some((d, k) => !Object.is(d, cell.deps[k]));
  if (!changed) return;
  cell.deps = deps;
  host.pending.push(() => {
    host.cleanups[i]?.();
    host.cleanups[i] = effect();
  });
}
