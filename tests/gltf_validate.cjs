// Validate glTF/GLB files with the Khronos glTF-Validator (npm package gltf-validator).
// node tests/gltf_validate.cjs FILE... -> one JSON line per file: {file, errors, warnings, infos, hints, messages}.
// The package is found through NODE_PATH (the pytest side adds `npm root -g`); exit code 3 when it is missing.
let validator;
try {
  validator = require("gltf-validator");
} catch (err) {
  console.log(JSON.stringify({ missing: String(err.message).split("\n")[0] }));
  process.exit(3);
}
const fs = require("fs");

async function main() {
  for (const file of process.argv.slice(2)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(file)), { maxIssues: 0 });
    const issues = report.issues;
    console.log(JSON.stringify({
      file,
      version: report.validatorVersion,
      errors: issues.numErrors, warnings: issues.numWarnings, infos: issues.numInfos, hints: issues.numHints,
      messages: issues.messages.map((m) => ({ code: m.code, severity: m.severity, pointer: m.pointer, message: m.message })),
    }));
  }
}
main().catch((err) => { console.log(JSON.stringify({ fatal: String(err) })); process.exit(2); });
