import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { expect } from "chai";
import {
  ActionsTokenEndpoint,
  buildOnce,
  cli,
  FIXTURES,
  type HttpTestBroker,
  startHttpBroker,
  taskAsOperator,
  tempDir,
} from "./cli-harness.ts";

const RECORD = join(FIXTURES, "record-env.mjs");
const REQUEST_TOKEN = ActionsTokenEndpoint.REQUEST_TOKEN;
describe("cli: identity from CI", () => {
  let t: HttpTestBroker;
  let endpoint: ActionsTokenEndpoint;
  let dir: string;

  before(async function () {
    this.timeout(60_000);
    await buildOnce();
    t = await startHttpBroker({ name: "cli-identity" });
    endpoint = new ActionsTokenEndpoint(t.issuer, "repo:acme/app:ref:refs/heads/main");
    await endpoint.start();
    dir = await tempDir();
  });
  after(async () => {
    await endpoint?.stop();
    await t?.close();
  });
  beforeEach(() => {
    endpoint.requests.length = 0;
  });

  const githubEnv = (extra: Record<string, string> = {}) => ({
    JITKEY_URL: t.url,
    CI: "true",
    GITHUB_ACTIONS: "true",
    GITHUB_REPOSITORY: "acme/app",
    GITHUB_WORKFLOW: "deploy",
    GITHUB_RUN_ID: "4242",
    GITHUB_SERVER_URL: "https://github.com",
    ACTIONS_ID_TOKEN_REQUEST_URL: endpoint.url,
    ACTIONS_ID_TOKEN_REQUEST_TOKEN: REQUEST_TOKEN,
    ...extra,
  });

  it("on GitHub Actions fetches the job's OIDC token with the audience and names the run in the goal", async () => {
    const out = join(dir, "github.json");
    const run = await cli(
      ["run", "--resource", "demo-api:read", "--", process.execPath, RECORD, out],
      githubEnv({ JITKEY_AUDIENCE: "jitkey" }),
    );
    expect(run.code, run.stderr).to.equal(0);
    expect(endpoint.requests.length, "the token is fetched once and reused while it is fresh").to.equal(1);
    expect(endpoint.requests[0]).to.deep.equal({
      authorization: `Bearer ${REQUEST_TOKEN}`,
      audience: "jitkey",
      apiVersion: "2.0",
    });
    const { env } = JSON.parse(await readFile(out, "utf8")) as { env: Record<string, string> };
    const task = await taskAsOperator(t, env.JITKEY_TASK_ID as string);
    expect(task.agentId).to.equal("ci:repo:acme/app:ref:refs/heads/main");
    expect(task.goal)
      .to.include("acme/app")
      .and.include('"deploy"')
      .and.include("https://github.com/acme/app/actions/runs/4242");
    expect(task.status).to.equal("completed");
  });

  it("asks GitHub for the --audience given, so a wrong one is refused by the broker (exit 4)", async () => {
    const run = await cli(
      ["run", "--resource", "demo-api:read", "--audience", "not-jitkey", "--", "true"],
      githubEnv(),
    );
    expect(endpoint.requests[0]?.audience).to.equal("not-jitkey");
    expect(run.code).to.equal(4);
    expect(run.stderr).to.include("unauthenticated");
  });

  it("exits 4 when the GitHub token endpoint refuses the request token", async () => {
    const run = await cli(
      ["run", "--resource", "demo-api:read", "--", "true"],
      githubEnv({ ACTIONS_ID_TOKEN_REQUEST_TOKEN: "wrong" }),
    );
    expect(run.code).to.equal(4);
    expect(run.stderr).to.include("identity_unavailable");
  });

  it("on GitHub Actions without id-token permission says how to grant it (exit 4)", async () => {
    const run = await cli(
      ["run", "--resource", "demo-api:read", "--", "true"],
      githubEnv({ ACTIONS_ID_TOKEN_REQUEST_URL: "", ACTIONS_ID_TOKEN_REQUEST_TOKEN: "" }),
    );
    expect(run.code).to.equal(4);
    expect(run.stderr).to.include("id-token: write");
  });

  it("on GitLab CI uses JITKEY_ID_TOKEN and names the pipeline in the goal", async () => {
    const out = join(dir, "gitlab.json");
    const run = await cli(["run", "--resource", "demo-api:read", "--", process.execPath, RECORD, out], {
      JITKEY_URL: t.url,
      CI: "true",
      GITLAB_CI: "true",
      CI_PROJECT_PATH: "acme/app",
      CI_PIPELINE_ID: "77",
      CI_JOB_URL: "https://gitlab.example/acme/app/-/jobs/991",
      JITKEY_ID_TOKEN: await t.issuer.token("repo:acme/gitlab-app"),
    });
    expect(run.code, run.stderr).to.equal(0);
    const { env } = JSON.parse(await readFile(out, "utf8")) as { env: Record<string, string> };
    const task = await taskAsOperator(t, env.JITKEY_TASK_ID as string);
    expect(task.agentId).to.equal("ci:repo:acme/gitlab-app");
    expect(task.goal).to.include("pipeline 77").and.include("https://gitlab.example/acme/app/-/jobs/991");
  });
});
