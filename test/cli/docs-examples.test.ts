import { execFile } from "node:child_process";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { expect } from "chai";
import { parse } from "yaml";
import { TestIssuer } from "../helpers/identity.ts";
import { ROOT } from "../helpers/process.ts";
import { eventually } from "../helpers/redis.ts";
import {
  ActionsTokenEndpoint,
  buildOnce,
  CLI,
  cleanEnv,
  closeServer,
  type HttpTestBroker,
  startHttpBroker,
  tempDir,
} from "./cli-harness.ts";

const GITHUB_SUBJECT = "repo:acme/app:ref:refs/heads/main";
const GITLAB_SUBJECT = "project_path:acme/app:ref_type:branch:ref:main";

/**
 * The resource server the examples call: it asks the broker (RFC 7662) whether the
 * bearer token is live and for `write`, and records what it received.
 */
class ReportsApi {
  readonly received: { active: boolean; scope?: string; body: string; token: string }[] = [];
  private server: Server | undefined;
  url = "";

  constructor(private readonly t: HttpTestBroker) {}

  async start(): Promise<void> {
    this.server = createServer(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const token = /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1] ?? "";
      const introspection = await this.t.http
        .post("/v1/introspect")
        .set("Authorization", `Bearer ${this.t.introspectorToken}`)
        .send({ token });
      const { active, scope } = introspection.body as { active: boolean; scope?: string };
      this.received.push({ active, scope, body: Buffer.concat(chunks).toString("utf8"), token });
      const scopes = scope?.split(" ") ?? [];
      const publish = req.method === "POST" && scopes.includes("write");
      const read = req.method === "GET" && scopes.includes("read");
      const allowed = req.url === "/v1/reports" && active && (publish || read);
      res
        .writeHead(allowed ? (publish ? 201 : 200) : 403, { "Content-Type": "application/json" })
        .end(read && allowed ? JSON.stringify([{ id: 1, title: "open tickets" }]) : "{}");
    });
    await new Promise<void>((resolve) => this.server?.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    if (this.server) await closeServer(this.server);
  }
}

describe("docs: the CI and library examples work as written", () => {
  let t: HttpTestBroker;
  let gitlab: TestIssuer;
  let actions: ActionsTokenEndpoint;
  let reports: ReportsApi;
  let bin: string;

  before(async function () {
    this.timeout(60_000);
    await buildOnce();
    gitlab = await TestIssuer.create("gitlab", "ES256", "https://gitlab.example");
    t = await startHttpBroker({
      name: "cli-ci-examples",
      config: (raw) => {
        (raw.identity as { issuers: unknown[] }).issuers.push(gitlab.config());
        (raw.resources as unknown[]).push({
          name: "reports-api",
          adapter: "jwt",
          classification: "internal",
          scopes: ["read", "write"],
          maxTtlSeconds: 900,
          options: { audience: "https://reports.example" },
        });
        (raw.policies as unknown[]).unshift({
          name: "ci-publish-reports",
          agents: [`ci:${GITHUB_SUBJECT}`, `gitlab:${GITLAB_SUBJECT}`],
          resources: ["reports-api"],
          scopes: ["read", "write"],
          maxClassification: "internal",
          autoApprove: true,
          maxTtlSeconds: 600,
        });
      },
    });
    actions = new ActionsTokenEndpoint(t.issuer, GITHUB_SUBJECT);
    await actions.start();
    reports = new ReportsApi(t);
    await reports.start();
    // `jitkey` on the PATH, as the examples' install step leaves it.
    bin = await tempDir();
    await writeFile(join(bin, "jitkey"), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`);
    await chmod(join(bin, "jitkey"), 0o755);
  });
  after(async () => {
    await reports?.stop();
    await actions?.stop();
    await t?.close();
  });
  beforeEach(() => {
    reports.received.length = 0;
  });

  /** The report reached the API with a live write credential, which was revoked after the step. */
  async function expectPublished(workdir: string): Promise<void> {
    expect(reports.received).to.have.length(1);
    const [call] = reports.received;
    expect(call).to.include({ active: true, scope: "write" });
    expect(call?.body).to.equal(await readFile(join(workdir, "out", "report.json"), "utf8"));
    await becomesInactive(call?.token as string);
  }

  /** Waits until introspection answers `active: false` for `token`: its lease was revoked. */
  async function becomesInactive(token: string): Promise<void> {
    await eventually(async () => {
      const res = await t.http
        .post("/v1/introspect")
        .set("Authorization", `Bearer ${t.introspectorToken}`)
        .send({ token });
      return res.body.active === false;
    });
  }

  it("GitHub Actions: the workflow's steps publish with the job's OIDC identity", async () => {
    const workflow = parse(await readFile(join(ROOT, "docs", "ci", "github-actions.yml"), "utf8"));
    expect(workflow.permissions["id-token"]).to.equal("write");
    const job = workflow.jobs.publish;
    const jobEnv = Object.fromEntries(
      Object.entries(job.env as Record<string, string>).filter(([, value]) => !String(value).includes("${{")),
    );
    const workdir = await tempDir();
    const env = cleanEnv({
      ...jobEnv,
      PATH: `${bin}:${process.env.PATH}`,
      JITKEY_URL: t.url,
      REPORTS_API_URL: reports.url,
      CI: "true",
      GITHUB_ACTIONS: "true",
      GITHUB_REPOSITORY: "acme/app",
      GITHUB_WORKFLOW: workflow.name,
      GITHUB_RUN_ID: "31337",
      ACTIONS_ID_TOKEN_REQUEST_URL: actions.url,
      ACTIONS_ID_TOKEN_REQUEST_TOKEN: ActionsTokenEndpoint.REQUEST_TOKEN,
    });
    // Every `run:` step but the install (jitkey is already on the PATH), in order, as bash -e.
    const steps = (job.steps as { name?: string; run?: string }[]).filter(
      (step) => step.run && step.name !== "Install the jitkey CLI",
    );
    expect(steps.map((step) => step.name)).to.have.length(2);
    for (const step of steps)
      await promisify(execFile)("bash", ["-e", "-c", step.run as string], { cwd: workdir, env });
    expect(actions.requests[0]?.audience).to.equal("jitkey");
    await expectPublished(workdir);
  });

  it("GitLab CI: the job's script publishes with its id_tokens identity", async () => {
    const pipeline = parse(await readFile(join(ROOT, "docs", "ci", "gitlab-ci.yml"), "utf8"));
    const job = pipeline["publish-report"];
    const audience = job.id_tokens.JITKEY_ID_TOKEN.aud as string;
    const workdir = await tempDir();
    const env = cleanEnv({
      PATH: `${bin}:${process.env.PATH}`,
      JITKEY_URL: t.url,
      REPORTS_API_URL: reports.url,
      CI: "true",
      GITLAB_CI: "true",
      CI_PROJECT_PATH: "acme/app",
      CI_PIPELINE_ID: "271",
      CI_JOB_URL: "https://gitlab.example/acme/app/-/jobs/828",
      JITKEY_ID_TOKEN: await gitlab.token(GITLAB_SUBJECT, { audience }),
    });
    // The runner runs script lines in one shell that stops at the first failure.
    await promisify(execFile)("sh", ["-e", "-c", (job.script as string[]).join("\n")], { cwd: workdir, env });
    await expectPublished(workdir);
  });

  it("docs/client.md: the withTask example reads reports with a credential that ends with the task", async () => {
    const doc = await readFile(join(ROOT, "docs", "client.md"), "utf8");
    const block = /<!-- example:start -->\n```ts\n([\s\S]*?)```\n<!-- example:end -->/.exec(doc)?.[1];
    expect(block, "the example block in docs/client.md").to.be.a("string");
    // Inside the package directory, so `jitkey/client` resolves through the package's exports.
    const dir = join(ROOT, "dist", "doc-examples");
    await mkdir(dir, { recursive: true });
    const script = join(dir, "with-task.mjs");
    await writeFile(script, block as string);
    const { stdout } = await promisify(execFile)(process.execPath, [script], {
      cwd: ROOT,
      env: cleanEnv({
        JITKEY_URL: t.url,
        JITKEY_IDENTITY_TOKEN: await t.issuer.token(GITHUB_SUBJECT),
        REPORTS_API_URL: reports.url,
      }),
    });
    expect(JSON.parse(stdout)).to.deep.equal([{ id: 1, title: "open tickets" }]);
    expect(reports.received).to.have.length(1);
    expect(reports.received[0]).to.include({ active: true, scope: "read" });
    await becomesInactive(reports.received[0]?.token as string);
  });
});
