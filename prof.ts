import { CompiledPolicy } from "./broker/policy/compiled-policy.ts";

const compiled = CompiledPolicy.compile({
  resources: [
    {
      name: "api",
      adapter: "jwt",
      classification: "internal",
      scopes: ["read"],
      maxTtlSeconds: 900,
      options: {},
    },
  ],
  policies: [
    {
      name: "r",
      agents: ["ci:*"],
      resources: ["api"],
      scopes: ["read"],
      maxClassification: "internal",
      autoApprove: false,
      maxTtlSeconds: 300,
    },
  ],
  cedarFiles: [
    {
      path: "g.cedar",
      text: '@id("g")\nforbid (principal, action, resource) when { context.task.goal like "*zz*" };\n',
    },
  ],
});
const view = compiled.view({ id: "ci:x" });
const facts = (goal: string) => ({
  task: { goal, resources: ["api"], scopes: ["read"], classification: "internal" as const, ageSeconds: 0 },
  scopes: ["read"],
  ttlSeconds: 60,
  now: Date.now(),
});
const small = facts("g");
const t = Date.now();
for (let i = 0; i < Number(process.env.N ?? 5000); i++) compiled.authorize("mint", view, "api", small);
console.log("hot", Date.now() - t);
for (let k = 1; k <= 6; k++) {
  const r = compiled.authorize("mint", view, "api", facts("x".repeat(2 ** (18 + k))));
  console.log(k, r.allowed);
  for (let i = 0; i < 2000; i++) compiled.authorize("mint", view, "api", small);
}
