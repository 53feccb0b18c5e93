import { expect } from "chai";
import { defaultGoal } from "../../cli/ci-goal.ts";
import { assertDistinctPrefixes, credentialEnv } from "../../cli/credential-env.ts";
import { UsageError } from "../../cli/exit-codes.ts";
import { parseResourceSpec } from "../../cli/resource-spec.ts";
import type { Credential } from "../../client/types.ts";

const minted = (resource: string, credential: Credential) => ({
  lease: { id: "lse_1", resource } as never,
  credential,
});

describe("cli: credential variables", () => {
  it("names a jwt credential's fields JITKEY_<RESOURCE>_<FIELD>", () => {
    const env = credentialEnv(
      minted("reports-api", { type: "bearer", token: "t0k", expiresAt: "2030-01-01T00:00:00.000Z" }),
    );
    expect(env).to.deep.equal({
      JITKEY_REPORTS_API_TYPE: "bearer",
      JITKEY_REPORTS_API_TOKEN: "t0k",
      JITKEY_REPORTS_API_EXPIRES_AT: "2030-01-01T00:00:00.000Z",
      JITKEY_REPORTS_API_LEASE_ID: "lse_1",
    });
  });

  it("splits camelCase fields into words (aws) and writes numbers as text (postgres)", () => {
    const aws = credentialEnv(
      minted("s3.exports", {
        type: "aws",
        accessKeyId: "AKIA",
        secretAccessKey: "s",
        sessionToken: "st",
        region: "eu-west-1",
        expiresAt: "x",
      }),
    );
    expect(aws).to.include({
      JITKEY_S3_EXPORTS_ACCESS_KEY_ID: "AKIA",
      JITKEY_S3_EXPORTS_SECRET_ACCESS_KEY: "s",
      JITKEY_S3_EXPORTS_SESSION_TOKEN: "st",
    });
    const pg = credentialEnv(
      minted("ledger-db", { type: "postgres", port: 5432, host: "db", expiresAt: "x" }),
    );
    expect(pg).to.include({ JITKEY_LEDGER_DB_PORT: "5432", JITKEY_LEDGER_DB_HOST: "db" });
  });

  it("flattens nested objects by path (vault data) and leaves out nulls", () => {
    const env = credentialEnv(
      minted("vault-db", {
        type: "vault",
        data: { username: "v-ro-1", password: "p", "lease-info": { ttl: 60 } },
        extra: null,
        list: ["a", "b"],
        expiresAt: "x",
      }),
    );
    expect(env).to.include({
      JITKEY_VAULT_DB_DATA_USERNAME: "v-ro-1",
      JITKEY_VAULT_DB_DATA_PASSWORD: "p",
      JITKEY_VAULT_DB_DATA_LEASE_INFO_TTL: "60",
      JITKEY_VAULT_DB_LIST_0: "a",
      JITKEY_VAULT_DB_LIST_1: "b",
    });
    expect(env).to.not.have.property("JITKEY_VAULT_DB_EXTRA");
  });

  it("refuses resources whose variables would collide", () => {
    expect(() => assertDistinctPrefixes(["a-b", "a_b"])).to.throw(UsageError);
    expect(() => assertDistinctPrefixes(["a", "a"])).to.throw(UsageError);
    expect(() => assertDistinctPrefixes(["a", "b"])).to.not.throw();
  });

  it("parses R:scope,scope and rejects empty parts", () => {
    expect(parseResourceSpec("reports-api:read,write")).to.deep.equal({
      resource: "reports-api",
      scopes: ["read", "write"],
    });
    expect(parseResourceSpec("reports-api")).to.deep.equal({ resource: "reports-api", scopes: [] });
    expect(() => parseResourceSpec(":read")).to.throw(UsageError);
    expect(() => parseResourceSpec("r:read,")).to.throw(UsageError);
  });

  it("names the CI run in the default goal, else the program and host", () => {
    expect(
      defaultGoal(
        { GITHUB_ACTIONS: "true", GITHUB_REPOSITORY: "acme/app", GITHUB_WORKFLOW: "ci", GITHUB_RUN_ID: "9" },
        "jitkey run make",
      ),
    )
      .to.include("acme/app")
      .and.include("https://github.com/acme/app/actions/runs/9");
    expect(
      defaultGoal({ GITLAB_CI: "true", CI_PROJECT_PATH: "acme/app", CI_PIPELINE_ID: "5" }, "jitkey run make"),
    )
      .to.include("acme/app")
      .and.include("pipeline 5");
    expect(defaultGoal({}, "jitkey run make")).to.match(/^jitkey run make by .+@.+/);
  });
});
