/**
 * The one entry to cedar-wasm's functions: the package's Node.js build (CommonJS that reads
 * its `.wasm` file synchronously, so it loads the same under Node 20 and 24, tsx and the
 * compiled `dist/`; its default ESM build imports the `.wasm` as a module, which Node 20
 * refuses). Types come from the package itself.
 */
import { setFlagsFromString } from "node:v8";

/*
 * V8 11 (Node 20) crashes the process ("Fatal error ... unreachable code" in
 * Deoptimizer::DoComputeBuiltinContinuation) when optimized code that inlined a call into
 * cedar-wasm is deoptimized while the call runs — reproduced by bench/policy-decisions.bench.ts,
 * where the wasm memory grows under a hot decision loop. Not inlining JS-to-Wasm calls avoids
 * it; V8 13 (Node 24) does not crash. Set before any decision code is optimized.
 */
if (Number(process.versions.v8.split(".")[0]) < 13) setFlagsFromString("--no-turbo-inline-js-wasm-calls");

export {
  checkParseContext,
  checkParseEntities,
  checkParseSchema,
  formatPolicies,
  isAuthorized,
  policySetTextToParts,
  policyToJson,
  policyToText,
  preparsePolicySet,
  statefulIsAuthorized,
  validate,
} from "@cedar-policy/cedar-wasm/nodejs";
