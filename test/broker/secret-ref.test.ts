import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { expect } from "chai";
import { z } from "zod";
import { secretRef } from "../../broker/secret-ref.ts";

describe("secret references in config", () => {
  const sources = (env: Record<string, string>) => ({
    env,
    readFile: (path: string) => {
      if (path === "/secrets/token") return "s3cret-from-file\n";
      if (path === "/secrets/empty") return "\n";
      throw Object.assign(new Error("ENOENT"), { code: "ENOENT" });
    },
  });
  const options = (env: Record<string, string> = {}) => z.object({ token: secretRef(sources(env)) });

  it("takes the value itself, an environment variable or a file, and drops a file's trailing newline", () => {
    expect(options().parse({ token: "inline" }).token).to.equal("inline");
    expect(options({ VAULT_TOKEN: "from-env" }).parse({ token: { env: "VAULT_TOKEN" } }).token).to.equal(
      "from-env",
    );
    expect(options().parse({ token: { file: "/secrets/token" } }).token).to.equal("s3cret-from-file");
  });

  it("fails naming the field when the variable is unset or the file is missing or empty, never showing a value", () => {
    for (const token of [{ env: "NOPE" }, { file: "/secrets/missing" }, { file: "/secrets/empty" }, ""]) {
      const result = options().safeParse({ token });
      expect(result.success, JSON.stringify(token)).to.equal(false);
      expect(result.error?.issues[0]?.path).to.deep.equal(["token"]);
    }
    const result = options({ OTHER: "s3cret" }).safeParse({ token: { env: "NOPE" } });
    expect(JSON.stringify(result.error?.issues)).not.to.include("s3cret");
  });

  it("refuses a reference with both forms or unknown fields", () => {
    expect(options().safeParse({ token: { env: "A", file: "/b" } }).success).to.equal(false);
    expect(options().safeParse({ token: { vault: "x" } }).success).to.equal(false);
  });

  it("reads a real file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "jitkey-secret-"));
    await writeFile(join(dir, "id"), "role-secret\n");
    expect(z.object({ s: secretRef() }).parse({ s: { file: join(dir, "id") } }).s).to.equal("role-secret");
  });
});
