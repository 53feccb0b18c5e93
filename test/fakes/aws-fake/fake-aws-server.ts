/**
 * FakeAwsServer — a FAKE of AWS STS and IAM for tests on machines without AWS.
 *
 * It speaks the AWS query protocol the way the real SDK v3 clients (`@aws-sdk/client-sts`,
 * `@aws-sdk/client-iam`) use it: a form-encoded POST (`Action=AssumeRole&Version=2011-06-15&…`,
 * lists as `Tags.member.N.Key`), SigV4-signed, answered with the XML elements and the
 * `<ErrorResponse>` error codes and HTTP statuses of the AWS STS API Reference (version
 * 2011-06-15: AssumeRole, GetCallerIdentity) and the IAM API Reference (version 2010-05-08:
 * GetRole, GetRolePolicy, PutRolePolicy, DeleteRolePolicy), with the limits the references and the IAM
 * User Guide's "IAM and AWS STS quotas" document: DurationSeconds 900–43,200 and the role's
 * MaxSessionDuration, RoleSessionName and SourceIdentity 2–64 of `[\w+=,.@-]`, at most 50
 * session tags of keys ≤ 128 and values ≤ 256 characters, session policy plaintext ≤ 2,048,
 * a role's inline policies ≤ 10,240 characters together (white space not counted), policy
 * documents URL-encoded in GetRolePolicy answers. Signatures are verified (see sigv4.ts).
 *
 * It is not AWS: one account, no allow-policy evaluation (a principal may do everything except
 * the actions a test denies it), no IAM propagation delay unless a test asks for stale reads.
 * STS's packed policy size is not published; the fake's stand-in is the deflated size of the
 * policy and tags against 1,024 bytes. Calls made with session credentials are refused when an
 * explicit Deny in the role's inline policies matches them (see deny-evaluator.ts), which is
 * how a revoked session looks to its holder.
 */
import { randomBytes } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { deflateRawSync } from "node:zlib";
import { isExplicitlyDenied } from "./deny-evaluator.ts";
import { SignatureError, verifySigV4 } from "./sigv4.ts";

const STS_VERSION = "2011-06-15";
const IAM_VERSION = "2010-05-08";
const NAMESPACE: Record<string, string> = {
  sts: `https://sts.amazonaws.com/doc/${STS_VERSION}/`,
  iam: `https://iam.amazonaws.com/doc/${IAM_VERSION}/`,
};
const ACCOUNT = "123456789012";

const NAME_CHARS = /^[\w+=,.@-]*$/;
const TAG_CHARS = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u;
/** Policy documents: tab, LF, CR and U+0020–U+00FF only (IAM quotas page). */
const POLICY_CHARS = /^[\t\n\r\u0020-\u00ff]+$/;
const SESSION_POLICY_MAX_CHARS = 2048;
const ROLE_INLINE_POLICIES_MAX_CHARS = 10_240;
const PACKED_BUDGET_BYTES = 1024;

/** A long-term IAM principal the fake knows (the broker's own credentials). */
export interface FakeAwsPrincipal {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  /** When set, requests must carry it as `x-amz-security-token` (temporary broker credentials). */
  readonly sessionToken?: string;
  /** e.g. `arn:aws:iam::123456789012:user/jitkey-broker`. */
  readonly arn: string;
  /** Actions answered with AccessDenied, e.g. `sts:TagSession`, `iam:PutRolePolicy`. */
  readonly deniedActions?: readonly string[];
}

/** An IAM role the fake knows. */
export interface FakeAwsRoleSpec {
  readonly arn: string;
  /** The role's MaxSessionDuration; default 3600. */
  readonly maxSessionDurationSeconds?: number;
  /** ARNs of principals its trust policy allows; default every known principal. */
  readonly trustedPrincipalArns?: readonly string[];
}

interface FakeRole extends FakeAwsRoleSpec {
  readonly name: string;
  readonly roleId: string;
  readonly inlinePolicies: Map<string, string>;
  /** Stale reads asked for, armed by the policy's next write: how many. */
  readonly pendingStaleReads: Map<string, number>;
  /** Armed stale reads: GetRolePolicy answers `document` (the pre-write one) `left` more times. */
  readonly staleReads: Map<string, { document: string | undefined; left: number }>;
}

/** A role session AssumeRole created; credentials included (the fake is test-only). */
export interface FakeStsSession {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken: string;
  readonly roleArn: string;
  readonly roleName: string;
  readonly sessionName: string;
  readonly sourceIdentity: string | undefined;
  readonly tags: Readonly<Record<string, string>>;
  readonly transitiveTagKeys: readonly string[];
  readonly policy: string | undefined;
  readonly durationSeconds: number;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
  readonly assumedRoleArn: string;
}

/** One request as the fake saw it: the query parameters, not the signature. */
export interface FakeAwsRequest {
  readonly service: string;
  readonly action: string;
  /** Every form parameter but Action and Version. */
  readonly params: Readonly<Record<string, string>>;
  readonly accessKeyId: string | undefined;
  /** The region of the SigV4 credential scope. */
  readonly region: string | undefined;
  /** The HTTP status answered, and the error code if any. */
  status: number;
  errorCode: string | undefined;
}

/** A fault a test injects: the next matching requests fail (or are slow, or are cut off). */
export interface FakeAwsFault {
  /** e.g. `AssumeRole`, `PutRolePolicy`; default every action. */
  readonly action?: string;
  readonly code?: string;
  readonly status?: number;
  readonly message?: string;
  /** Answer only after this long (with the error, or normally when no code is given). */
  readonly delayMs?: number;
  /** Destroy the connection instead of answering. */
  readonly dropConnection?: boolean;
  /** How many requests it applies to; default 1. */
  times?: number;
}

class AwsFault extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly type: "Sender" | "Receiver" = status >= 500 ? "Receiver" : "Sender",
  ) {
    super(message);
  }
}

const validation = (message: string) =>
  new AwsFault(400, "ValidationError", `1 validation error detected: ${message}`);

function xmlEscape(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&apos;");
}

/** Renders `{A: "x", B: {C: "y"}}` as `<A>x</A><B><C>y</C></B>`. */
function xml(fields: Record<string, unknown>): string {
  return Object.entries(fields)
    .filter(([, value]) => value !== undefined)
    .map(([name, value]) =>
      typeof value === "object" && value !== null
        ? `<${name}>${xml(value as Record<string, unknown>)}</${name}>`
        : `<${name}>${xmlEscape(String(value))}</${name}>`,
    )
    .join("");
}

function randomUpper(length: number): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  return [...randomBytes(length)].map((byte) => alphabet[byte % 32]).join("");
}

/** A role's inline policy size as IAM counts it: white space is not counted. */
function policySize(document: string): number {
  return document.replace(/\s/g, "").length;
}

/** The checks IAM makes of an identity policy document; throws MalformedPolicyDocument. */
function validatePolicyDocument(document: string): void {
  const malformed = (message: string) => new AwsFault(400, "MalformedPolicyDocument", message);
  if (!POLICY_CHARS.test(document))
    throw malformed("Policy document contains characters outside U+0020–U+00FF.");
  let parsed: unknown;
  try {
    parsed = JSON.parse(document);
  } catch {
    throw malformed("Syntax errors in policy.");
  }
  const policy = parsed as { Version?: unknown; Statement?: unknown };
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
    throw malformed("Syntax errors in policy.");
  if (policy.Version !== undefined && policy.Version !== "2012-10-17" && policy.Version !== "2008-10-17") {
    throw malformed("The policy failed legacy parsing");
  }
  if (policy.Statement === undefined) throw malformed("Missing required field Statement");
  const statements = (Array.isArray(policy.Statement) ? policy.Statement : [policy.Statement]) as Record<
    string,
    unknown
  >[];
  for (const statement of statements) {
    if (typeof statement !== "object" || statement === null) throw malformed("Syntax errors in policy.");
    if (statement.Effect !== "Allow" && statement.Effect !== "Deny") throw malformed("Invalid effect");
    if (statement.Principal !== undefined || statement.NotPrincipal !== undefined) {
      throw malformed("Policy document should not specify a principal.");
    }
    if ((statement.Action === undefined) === (statement.NotAction === undefined)) {
      throw malformed("Policy statement must contain actions.");
    }
    if ((statement.Resource === undefined) === (statement.NotResource === undefined)) {
      throw malformed("Policy statement must contain resources.");
    }
    if (statement.Sid !== undefined && !/^[A-Za-z0-9]*$/.test(String(statement.Sid))) {
      throw malformed("Statement IDs (SID) must be alpha-numeric.");
    }
  }
}

/** Reads `Prefix.member.N` (or `Prefix.member.N.Field`) list parameters in order. */
function memberList(params: URLSearchParams, prefix: string): Record<string, string>[] {
  const items = new Map<number, Record<string, string>>();
  const pattern = new RegExp(`^${prefix.replace(/\./g, "\\.")}\\.member\\.(\\d+)(?:\\.(\\w+))?$`);
  for (const [key, value] of params) {
    const match = pattern.exec(key);
    if (!match) continue;
    const index = Number(match[1]);
    const item = items.get(index) ?? {};
    item[match[2] ?? ""] = value;
    items.set(index, item);
  }
  return [...items.entries()].sort(([a], [b]) => a - b).map(([, item]) => item);
}

/** The caller, once its signature checked out. */
type Caller =
  | { kind: "principal"; principal: FakeAwsPrincipal }
  | { kind: "session"; session: FakeStsSession };

export class FakeAwsServer {
  /** Every request, in order. */
  readonly requests: FakeAwsRequest[] = [];
  readonly #principals = new Map<string, FakeAwsPrincipal>();
  readonly #roles = new Map<string, FakeRole>();
  readonly #sessions = new Map<string, FakeStsSession>();
  readonly #faults: FakeAwsFault[] = [];
  #endpoint = "";

  private constructor(
    private readonly server: Server,
    /** The region every request must be signed for. */
    readonly region: string,
    private readonly clock: { now(): number },
  ) {}

  /** Starts the fake on a free loopback port. `clock` defaults to the system clock. */
  static async start(options: { region?: string; clock?: { now(): number } } = {}): Promise<FakeAwsServer> {
    let fake: FakeAwsServer | undefined;
    const server = createServer((request, response) => {
      fake?.handle(request, response).catch((error: unknown) => {
        response.statusCode = 500;
        response.end(String(error));
      });
    });
    fake = new FakeAwsServer(
      server,
      options.region ?? "us-east-1",
      options.clock ?? { now: () => Date.now() },
    );
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    fake.#endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return fake;
  }

  /** The URL to give the SDK clients as `endpoint`. */
  get endpoint(): string {
    return this.#endpoint;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Adds a principal with fresh long-term keys; returns it. */
  addPrincipal(
    name: string,
    options: { deniedActions?: readonly string[]; sessionToken?: string } = {},
  ): FakeAwsPrincipal {
    const principal: FakeAwsPrincipal = {
      accessKeyId: `AKIA${randomUpper(16)}`,
      secretAccessKey: randomBytes(30).toString("base64"),
      arn: `arn:aws:iam::${ACCOUNT}:user/${name}`,
      ...options,
    };
    this.#principals.set(principal.accessKeyId, principal);
    return principal;
  }

  /** Adds a role; returns its ARN. */
  addRole(name: string, spec: Omit<FakeAwsRoleSpec, "arn"> & { path?: string } = {}): string {
    const arn = `arn:aws:iam::${ACCOUNT}:role${spec.path ?? "/"}${name}`;
    this.#roles.set(name, {
      ...spec,
      arn,
      name,
      roleId: `AROA${randomUpper(17)}`,
      inlinePolicies: new Map(),
      pendingStaleReads: new Map(),
      staleReads: new Map(),
    });
    return arn;
  }

  /** A role's inline policy as stored (plain JSON), or undefined. */
  rolePolicy(roleName: string, policyName: string): string | undefined {
    return this.#role(roleName).inlinePolicies.get(policyName);
  }

  /** Sets an inline policy directly (another team's policy taking room on the role). */
  setRolePolicy(roleName: string, policyName: string, document: string): void {
    this.#role(roleName).inlinePolicies.set(policyName, document);
  }

  /** The next `reads` GetRolePolicy calls for this policy answer what it held before the next write. */
  staleReadsAfterNextWrite(roleName: string, policyName: string, reads: number): void {
    this.#role(roleName).pendingStaleReads.set(policyName, reads);
  }

  /** Every session AssumeRole created, expired or not. */
  sessions(): FakeStsSession[] {
    return [...this.#sessions.values()];
  }

  /** Queues a fault for the next matching requests. */
  injectFault(fault: FakeAwsFault): void {
    this.#faults.push({ ...fault, times: fault.times ?? 1 });
  }

  /**
   * Whether a call of `action` made now with this session's credentials would be refused: the
   * session has expired, or an explicit Deny in its role's inline policies matches it.
   */
  isSessionRefused(session: FakeStsSession, action = "s3:GetObject"): boolean {
    if (session.expiresAt.getTime() <= this.clock.now()) return true;
    return this.isDeniedByRole(session.roleName, {
      principalTags: session.tags,
      tokenIssueTime: session.issuedAt,
      action,
    });
  }

  /** Whether the role's inline policies explicitly deny a session with these tags and issue time. */
  isDeniedByRole(
    roleName: string,
    call: { principalTags: Readonly<Record<string, string>>; tokenIssueTime: Date; action?: string },
  ): boolean {
    return isExplicitlyDenied(this.#role(roleName).inlinePolicies.values(), {
      ...call,
      action: call.action ?? "s3:GetObject",
    });
  }

  #role(name: string): FakeRole {
    const role = this.#roles.get(name);
    if (!role) throw new Error(`fake: no role ${name}`);
    return role;
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const params = new URLSearchParams(body.toString("utf8"));
    const action = params.get("Action") ?? "";
    const record: FakeAwsRequest = {
      service: "",
      action,
      params: Object.fromEntries([...params].filter(([key]) => key !== "Action" && key !== "Version")),
      accessKeyId: undefined,
      region: undefined,
      status: 200,
      errorCode: undefined,
    };
    this.requests.push(record);
    let service = "sts";
    try {
      const signed = verifySigV4(
        { method: request.method ?? "", target: request.url ?? "/", headers: request.headers, body },
        (accessKeyId) =>
          this.#principals.get(accessKeyId)?.secretAccessKey ??
          this.#sessions.get(accessKeyId)?.secretAccessKey,
      );
      service = signed.service;
      Object.assign(record, { service, accessKeyId: signed.accessKeyId, region: signed.region });
      const fault = this.#takeFault(action);
      if (fault?.delayMs) await new Promise((resolve) => setTimeout(resolve, fault.delayMs));
      if (fault?.dropConnection) {
        record.status = 0;
        request.socket.destroy();
        return;
      }
      if (fault?.code)
        throw new AwsFault(fault.status ?? 400, fault.code, fault.message ?? `injected ${fault.code}`);
      if (request.method !== "POST")
        throw new AwsFault(400, "InvalidAction", "The query protocol needs POST here.");
      if (signed.region !== this.region) {
        throw new AwsFault(
          403,
          "SignatureDoesNotMatch",
          `Credential should be scoped to a valid region, not '${signed.region}'.`,
        );
      }
      const caller = this.#caller(signed.accessKeyId, signed.sessionToken);
      const version = params.get("Version");
      const expectedVersion = service === "sts" ? STS_VERSION : service === "iam" ? IAM_VERSION : undefined;
      if (!expectedVersion) throw new AwsFault(400, "InvalidAction", `unknown service ${service}`);
      if (version !== expectedVersion) {
        throw new AwsFault(400, "InvalidAction", `Could not find operation ${action} for version ${version}`);
      }
      const result = this.#dispatch(service, action, params, caller);
      this.#send(response, 200, this.#success(service, action, result));
    } catch (error) {
      if (error instanceof SignatureError) {
        const status = error.code === "IncompleteSignature" ? 400 : 403;
        record.status = status;
        record.errorCode = error.code;
        this.#send(response, status, this.#error(service, "Sender", error.code, error.message));
        return;
      }
      if (!(error instanceof AwsFault)) throw error;
      record.status = error.status;
      record.errorCode = error.code;
      this.#send(response, error.status, this.#error(service, error.type, error.code, error.message));
    }
  }

  #takeFault(action: string): FakeAwsFault | undefined {
    const index = this.#faults.findIndex((fault) => !fault.action || fault.action === action);
    if (index < 0) return undefined;
    const fault = this.#faults[index] as FakeAwsFault;
    fault.times = (fault.times ?? 1) - 1;
    if (fault.times <= 0) this.#faults.splice(index, 1);
    return fault;
  }

  #caller(accessKeyId: string, sessionToken: string | undefined): Caller {
    const principal = this.#principals.get(accessKeyId);
    if (principal) {
      if (principal.sessionToken !== undefined && principal.sessionToken !== sessionToken) {
        throw new AwsFault(
          403,
          "InvalidClientTokenId",
          "The security token included in the request is invalid.",
        );
      }
      return { kind: "principal", principal };
    }
    const session = this.#sessions.get(accessKeyId);
    if (!session || session.sessionToken !== sessionToken) {
      throw new AwsFault(
        403,
        "InvalidClientTokenId",
        "The security token included in the request is invalid.",
      );
    }
    if (session.expiresAt.getTime() <= this.clock.now()) {
      throw new AwsFault(400, "ExpiredToken", "The security token included in the request is expired");
    }
    return { kind: "session", session };
  }

  #authorize(caller: Caller, action: string, resource: string): void {
    const arn = caller.kind === "principal" ? caller.principal.arn : caller.session.assumedRoleArn;
    if (caller.kind === "principal") {
      if (!caller.principal.deniedActions?.includes(action)) return;
      throw new AwsFault(
        403,
        "AccessDenied",
        `User: ${arn} is not authorized to perform: ${action} on resource: ${resource} because no identity-based policy allows the ${action} action`,
      );
    }
    // sts:GetCallerIdentity works even when explicitly denied (STS API reference).
    if (action === "sts:GetCallerIdentity") return;
    if (this.isSessionRefused(caller.session, action)) {
      throw new AwsFault(
        403,
        "AccessDenied",
        `User: ${arn} is not authorized to perform: ${action} on resource: ${resource} with an explicit deny in an identity-based policy`,
      );
    }
  }

  #dispatch(
    service: string,
    action: string,
    params: URLSearchParams,
    caller: Caller,
  ): Record<string, unknown> {
    if (service === "sts" && action === "AssumeRole") return this.#assumeRole(params, caller);
    if (service === "sts" && action === "GetCallerIdentity") return this.#getCallerIdentity(caller);
    if (service === "iam" && action === "GetRolePolicy") return this.#getRolePolicy(params, caller);
    if (service === "iam" && action === "PutRolePolicy") return this.#putRolePolicy(params, caller);
    if (service === "iam" && action === "DeleteRolePolicy") return this.#deleteRolePolicy(params, caller);
    if (service === "iam" && action === "GetRole") return this.#getRole(params, caller);
    throw new AwsFault(
      400,
      "InvalidAction",
      `Could not find operation ${action} for version ${params.get("Version")}`,
    );
  }

  #assumeRole(params: URLSearchParams, caller: Caller): Record<string, unknown> {
    const roleArn = params.get("RoleArn");
    const sessionName = params.get("RoleSessionName");
    if (roleArn === null)
      throw validation("Value null at 'roleArn' failed to satisfy constraint: Member must not be null");
    if (sessionName === null) {
      throw validation(
        "Value null at 'roleSessionName' failed to satisfy constraint: Member must not be null",
      );
    }
    if (sessionName.length < 2 || sessionName.length > 64) {
      throw validation(
        `Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint: Member must have length between 2 and 64`,
      );
    }
    if (!NAME_CHARS.test(sessionName)) {
      throw validation(
        `Value '${sessionName}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*`,
      );
    }
    const durationText = params.get("DurationSeconds");
    const durationSeconds = durationText === null ? 3600 : Number(durationText);
    if (!Number.isInteger(durationSeconds) || durationSeconds < 900 || durationSeconds > 43_200) {
      throw validation(
        `Value '${durationText}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200`,
      );
    }
    const sourceIdentity = params.get("SourceIdentity") ?? undefined;
    if (sourceIdentity !== undefined) {
      if (sourceIdentity.length < 2 || sourceIdentity.length > 64 || !NAME_CHARS.test(sourceIdentity)) {
        throw validation(
          `Value '${sourceIdentity}' at 'sourceIdentity' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]* and have length between 2 and 64`,
        );
      }
      if (sourceIdentity.toLowerCase().startsWith("aws:")) {
        throw new AwsFault(
          400,
          "ValidationError",
          "SourceIdentity cannot begin with the reserved prefix aws:",
        );
      }
    }
    const tagList = memberList(params, "Tags");
    if (tagList.length > 50) {
      throw validation(
        "Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50",
      );
    }
    const tags: Record<string, string> = {};
    const seenKeys = new Set<string>();
    for (const tag of tagList) {
      const key = tag.Key ?? "";
      const value = tag.Value ?? "";
      if (key.length < 1 || key.length > 128 || !TAG_CHARS.test(key)) {
        throw validation(`Value '${key}' at 'tags.member.key' failed to satisfy constraint`);
      }
      if (value.length > 256 || !TAG_CHARS.test(value)) {
        throw validation(`Value '${value}' at 'tags.member.value' failed to satisfy constraint`);
      }
      if (seenKeys.has(key.toLowerCase())) {
        throw new AwsFault(
          400,
          "InvalidParameterValue",
          "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
        );
      }
      seenKeys.add(key.toLowerCase());
      tags[key] = value;
    }
    const transitiveTagKeys = memberList(params, "TransitiveTagKeys").map((item) => item[""] ?? "");
    for (const key of transitiveTagKeys) {
      if (!seenKeys.has(key.toLowerCase())) {
        throw new AwsFault(400, "InvalidParameterValue", `Transitive tag key ${key} is not a session tag.`);
      }
    }
    const policy = params.get("Policy") ?? undefined;
    if (policy !== undefined) {
      validatePolicyDocument(policy);
      if (policy.length > SESSION_POLICY_MAX_CHARS) {
        throw new AwsFault(
          400,
          "PackedPolicyTooLarge",
          `Packed policy consumes ${Math.ceil((100 * policy.length) / SESSION_POLICY_MAX_CHARS)}% of allotted space, please use smaller policy.`,
        );
      }
    }

    // Authorization: AssumeRole on the role (trust policy), TagSession and SetSourceIdentity.
    const roleName = roleArn.split("/").pop() ?? "";
    const role = this.#roles.get(roleName);
    this.#authorize(caller, "sts:AssumeRole", roleArn);
    const callerArn = caller.kind === "principal" ? caller.principal.arn : caller.session.assumedRoleArn;
    const trusted =
      role &&
      role.arn === roleArn &&
      (!role.trustedPrincipalArns || role.trustedPrincipalArns.includes(callerArn));
    if (!role || !trusted) {
      throw new AwsFault(
        403,
        "AccessDenied",
        `User: ${callerArn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`,
      );
    }
    if (tagList.length > 0) this.#authorize(caller, "sts:TagSession", roleArn);
    if (sourceIdentity !== undefined) this.#authorize(caller, "sts:SetSourceIdentity", roleArn);
    if (durationSeconds > (role.maxSessionDurationSeconds ?? 3600)) {
      throw new AwsFault(
        400,
        "ValidationError",
        "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
      );
    }
    const tagText = tagList.map((tag) => `${tag.Key}=${tag.Value}`).join("\n");
    const packed = deflateRawSync(Buffer.from(`${policy ?? ""}\n${tagText}`, "utf8")).length;
    const packedPercent = Math.ceil((100 * packed) / PACKED_BUDGET_BYTES);
    if (packedPercent > 100) {
      throw new AwsFault(
        400,
        "PackedPolicyTooLarge",
        `Packed policy consumes ${packedPercent}% of allotted space, please use smaller policy.`,
      );
    }

    const issuedAt = new Date(this.clock.now());
    const session: FakeStsSession = {
      accessKeyId: `ASIA${randomUpper(16)}`,
      secretAccessKey: randomBytes(30).toString("base64"),
      sessionToken: `FwoGZXIvYXdzE${randomBytes(240).toString("base64")}`,
      roleArn,
      roleName,
      sessionName,
      sourceIdentity,
      tags,
      transitiveTagKeys,
      policy,
      durationSeconds,
      issuedAt,
      expiresAt: new Date(issuedAt.getTime() + durationSeconds * 1000),
      assumedRoleArn: `arn:aws:sts::${ACCOUNT}:assumed-role/${roleName}/${sessionName}`,
    };
    this.#sessions.set(session.accessKeyId, session);
    return {
      Credentials: {
        AccessKeyId: session.accessKeyId,
        SecretAccessKey: session.secretAccessKey,
        SessionToken: session.sessionToken,
        Expiration: session.expiresAt.toISOString(),
      },
      AssumedRoleUser: { AssumedRoleId: `${role.roleId}:${sessionName}`, Arn: session.assumedRoleArn },
      PackedPolicySize: packedPercent,
      SourceIdentity: sourceIdentity,
    };
  }

  #getCallerIdentity(caller: Caller): Record<string, unknown> {
    if (caller.kind === "principal") {
      return {
        Arn: caller.principal.arn,
        UserId: `AIDA${caller.principal.accessKeyId.slice(4)}`,
        Account: ACCOUNT,
      };
    }
    const role = this.#roles.get(caller.session.roleName);
    return {
      Arn: caller.session.assumedRoleArn,
      UserId: `${role?.roleId ?? "AROA"}:${caller.session.sessionName}`,
      Account: ACCOUNT,
    };
  }

  #roleAndPolicyName(params: URLSearchParams): { role: FakeRole; policyName: string } {
    const roleName = params.get("RoleName") ?? "";
    const policyName = params.get("PolicyName") ?? "";
    if (roleName.length < 1 || roleName.length > 64 || !NAME_CHARS.test(roleName)) {
      throw validation(
        `Value '${roleName}' at 'roleName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+`,
      );
    }
    if (policyName.length < 1 || policyName.length > 128 || !NAME_CHARS.test(policyName)) {
      throw validation(
        `Value '${policyName}' at 'policyName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]+`,
      );
    }
    const role = this.#roles.get(roleName);
    if (!role) throw new AwsFault(404, "NoSuchEntity", `The role with name ${roleName} cannot be found.`);
    return { role, policyName };
  }

  #getRole(params: URLSearchParams, caller: Caller): Record<string, unknown> {
    const roleName = params.get("RoleName") ?? "";
    const role = this.#roles.get(roleName);
    if (!role) throw new AwsFault(404, "NoSuchEntity", `The role with name ${roleName} cannot be found.`);
    this.#authorize(caller, "iam:GetRole", role.arn);
    const trust = {
      Version: "2012-10-17",
      Statement: (role.trustedPrincipalArns ?? [`arn:aws:iam::${ACCOUNT}:root`]).map((arn) => ({
        Effect: "Allow",
        Principal: { AWS: arn },
        Action: ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
      })),
    };
    return {
      Role: {
        Path: role.arn.slice(role.arn.indexOf(":role") + 5, -role.name.length),
        RoleName: role.name,
        RoleId: role.roleId,
        Arn: role.arn,
        CreateDate: new Date(0).toISOString(),
        AssumeRolePolicyDocument: encodeURIComponent(JSON.stringify(trust)),
        MaxSessionDuration: role.maxSessionDurationSeconds ?? 3600,
      },
    };
  }

  #getRolePolicy(params: URLSearchParams, caller: Caller): Record<string, unknown> {
    const { role, policyName } = this.#roleAndPolicyName(params);
    this.#authorize(caller, "iam:GetRolePolicy", role.arn);
    const stale = role.staleReads.get(policyName);
    let document = role.inlinePolicies.get(policyName);
    if (stale) {
      document = stale.document;
      stale.left -= 1;
      if (stale.left <= 0) role.staleReads.delete(policyName);
    }
    if (document === undefined) {
      throw new AwsFault(404, "NoSuchEntity", `The role policy with name ${policyName} cannot be found.`);
    }
    return { RoleName: role.name, PolicyName: policyName, PolicyDocument: encodeURIComponent(document) };
  }

  #putRolePolicy(params: URLSearchParams, caller: Caller): Record<string, unknown> {
    const { role, policyName } = this.#roleAndPolicyName(params);
    this.#authorize(caller, "iam:PutRolePolicy", role.arn);
    const document = params.get("PolicyDocument");
    if (document === null || document.length < 1 || document.length > 131_072) {
      throw validation(
        "Value at 'policyDocument' failed to satisfy constraint: Member must have length between 1 and 131072",
      );
    }
    validatePolicyDocument(document);
    let total = policySize(document);
    for (const [name, other] of role.inlinePolicies) if (name !== policyName) total += policySize(other);
    if (total > ROLE_INLINE_POLICIES_MAX_CHARS) {
      throw new AwsFault(
        409,
        "LimitExceeded",
        `Maximum policy size of ${ROLE_INLINE_POLICIES_MAX_CHARS} bytes exceeded for role ${role.name}`,
      );
    }
    this.#armStaleReads(role, policyName);
    role.inlinePolicies.set(policyName, document);
    return {};
  }

  #deleteRolePolicy(params: URLSearchParams, caller: Caller): Record<string, unknown> {
    const { role, policyName } = this.#roleAndPolicyName(params);
    this.#authorize(caller, "iam:DeleteRolePolicy", role.arn);
    if (!role.inlinePolicies.has(policyName)) {
      throw new AwsFault(404, "NoSuchEntity", `The role policy with name ${policyName} cannot be found.`);
    }
    this.#armStaleReads(role, policyName);
    role.inlinePolicies.delete(policyName);
    return {};
  }

  /** A requested stale-read window starts at the next write: reads then see the old document. */
  #armStaleReads(role: FakeRole, policyName: string): void {
    const reads = role.pendingStaleReads.get(policyName);
    if (!reads) return;
    role.pendingStaleReads.delete(policyName);
    role.staleReads.set(policyName, { document: role.inlinePolicies.get(policyName), left: reads });
  }

  #success(service: string, action: string, result: Record<string, unknown>): string {
    const requestId = crypto.randomUUID();
    const inner = Object.keys(result).length > 0 ? `<${action}Result>${xml(result)}</${action}Result>` : "";
    return `<${action}Response xmlns="${NAMESPACE[service]}">${inner}<ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`;
  }

  #error(service: string, type: string, code: string, message: string): string {
    return `<ErrorResponse xmlns="${NAMESPACE[service] ?? NAMESPACE.sts}"><Error><Type>${type}</Type><Code>${xmlEscape(code)}</Code><Message>${xmlEscape(message)}</Message></Error><RequestId>${crypto.randomUUID()}</RequestId></ErrorResponse>`;
  }

  #send(response: ServerResponse, status: number, body: string): void {
    response.writeHead(status, { "Content-Type": "text/xml", "Content-Length": Buffer.byteLength(body) });
    response.end(body);
  }
}
