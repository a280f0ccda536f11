// Validate UI workflows with the ComfyUI frontend's own zod schema (validateComfyWorkflow).
// node tests/frontend_validate.mjs CHUNK_JS EXPORT_NAME WORKFLOW.json... -> one JSON line per file.
// The frontend bundle expects a browser; the few globals it touches at import are stubbed.
const noop = () => {};
const storage = { getItem: () => null, setItem: noop, removeItem: noop };
Object.assign(globalThis, {
  window: globalThis, localStorage: storage, sessionStorage: storage, addEventListener: noop,
  location: { href: "http://127.0.0.1/", origin: "http://127.0.0.1", pathname: "/", search: "" },
  matchMedia: () => ({ matches: false, addEventListener: noop }),
  HTMLElement: class {}, customElements: { define: noop, get: noop },
  Worker: class { addEventListener() {} postMessage() {} start() {} },
  document: {
    addEventListener: noop, querySelector: () => null, documentElement: { style: {} },
    head: { appendChild: noop }, body: { appendChild: noop },
    createElement: () => ({ style: {}, setAttribute: noop, appendChild: noop }),
  },
});
if (!globalThis.navigator) globalThis.navigator = { userAgent: "node", language: "en" };
URL.createObjectURL = () => "blob:stub";
URL.revokeObjectURL = noop;
const fs = await import("node:fs");
const [chunk, exportName, ...files] = process.argv.slice(2);
const mod = await import(chunk);
const validate = mod[exportName];
if (typeof validate !== "function") {
  console.log(JSON.stringify({ fatal: `export ${exportName} of ${chunk} is not a function` }));
  process.exit(0);
}
for (const file of files) {
  const errors = [];
  const parsed = await validate(JSON.parse(fs.readFileSync(file, "utf8")), (e) => errors.push(String(e)));
  console.log("@@FRONTEND@@" + JSON.stringify({ file, valid: Boolean(parsed), errors }));
}
