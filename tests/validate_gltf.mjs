// Validate glTF/GLB files with the Khronos glTF-Validator (npm package "gltf-validator").
// Usage: node validate_gltf.mjs <node_modules dir parent> <file> [<file> ...]
// Prints one JSON array of {path, numErrors, numWarnings, numInfos, messages} on stdout.
import { createRequire } from "node:module";
import { readFile } from "node:fs/promises";
import path from "node:path";

const [prefix, ...files] = process.argv.slice(2);
if (!prefix || files.length === 0) {
  console.error("usage: node validate_gltf.mjs <npm prefix> <file> [<file> ...]");
  process.exit(2);
}
// The package lives in a cache folder outside the repository's module resolution, so resolve it from there.
const require = createRequire(path.join(path.resolve(prefix), "package.json"));
const validator = require("gltf-validator");

const reports = [];
for (const file of files) {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 100,
    // Embedded GLB resources only; any external reference is an error for our files.
    externalResourceFunction: (uri) => Promise.reject(`external resource not allowed: ${uri}`),
  });
  reports.push({
    path: file,
    validatorVersion: report.validatorVersion,
    numErrors: report.issues.numErrors,
    numWarnings: report.issues.numWarnings,
    numInfos: report.issues.numInfos,
    messages: report.issues.messages,
  });
}
console.log(JSON.stringify(reports));
