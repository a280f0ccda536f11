// Validate glTF binaries with the Khronos glTF validator (npm package gltf-validator).
// node tests/anim_gltf_validate.cjs FILE.glb... -> one JSON line per file: {file, errors, warnings, messages}.
// Resolved through NODE_PATH (e.g. the global `npm root -g` folder).
const fs = require("fs");
const validator = require("gltf-validator");

(async () => {
  for (const file of process.argv.slice(2)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), {
      maxIssues: 50, externalResourceFunction: () => Promise.reject(new Error("no external resources")),
    });
    const issues = report.issues;
    const messages = issues.messages.filter((m) => m.severity <= 1)
      .map((m) => `${m.severity === 0 ? "E" : "W"} ${m.code} ${m.pointer || ""} ${m.message}`);
    console.log(JSON.stringify({ file, errors: issues.numErrors, warnings: issues.numWarnings, messages }));
  }
})().catch((err) => { console.log(JSON.stringify({ fatal: String(err) })); process.exit(1); });
