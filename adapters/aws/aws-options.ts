import { z } from "zod";
import { SecretRef } from "../../broker/secret-ref.ts";
import { SESSION_POLICY_MAX_CHARS, sessionPolicyFor } from "./session-policy.ts";

/** `arn:<partition>:iam::<account>:role/<path/><name>`; the IAM API wants the bare name. */
const ROLE_ARN = /^arn:aws[a-z-]*:iam::\d{12}:role\/(?:[\x21-\x7e]*\/)?([\w+=,.@-]{1,64})$/;

/** The role name inside a role ARN (the part after the last `/`). */
export function roleNameOf(roleArn: string): string {
  const match = ROLE_ARN.exec(roleArn);
  if (!match?.[1]) throw new Error(`not an IAM role ARN: ${roleArn}`);
  return match[1];
}

/** A string or a list of strings, as IAM policies allow for Action, Resource and the like. */
const OneOrMany = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);

/**
 * One IAM policy statement of a scope. Principal is refused: session policies are identity
 * policies. Conditions are passed through as written (IAM validates them on AssumeRole).
 */
export const PolicyStatement = z
  .object({
    Sid: z
      .string()
      .regex(/^[A-Za-z0-9]+$/, "IAM statement ids are letters and digits only")
      .optional(),
    Effect: z.enum(["Allow", "Deny"]),
    Action: OneOrMany.optional(),
    NotAction: OneOrMany.optional(),
    Resource: OneOrMany.optional(),
    NotResource: OneOrMany.optional(),
    Condition: z.record(z.string(), z.record(z.string(), z.unknown())).optional(),
  })
  .strict()
  .superRefine((statement, ctx) => {
    if ((statement.Action === undefined) === (statement.NotAction === undefined)) {
      ctx.addIssue({ code: "custom", path: ["Action"], message: "set exactly one of Action and NotAction" });
    }
    if ((statement.Resource === undefined) === (statement.NotResource === undefined)) {
      ctx.addIssue({
        code: "custom",
        path: ["Resource"],
        message: "set exactly one of Resource and NotResource",
      });
    }
  });
export type PolicyStatement = z.infer<typeof PolicyStatement>;

/** The broker's own AWS credentials, when not taken from the SDK's default provider chain. */
const ExplicitCredentials = z
  .object({
    accessKeyId: z.string().min(16).max(128),
    /** The value, `{ env: NAME }` or `{ file: PATH }`. */
    secretAccessKey: SecretRef,
    /** For temporary broker credentials: the value, `{ env: NAME }` or `{ file: PATH }`. */
    sessionToken: SecretRef.optional(),
  })
  .strict();

/**
 * Resource `options` for the `aws` adapter (AWS STS AssumeRole, revocation by an inline deny
 * policy on the role).
 *
 * @example
 * ```yaml
 * options:
 *   roleArn: arn:aws:iam::123456789012:role/jitkey-reports
 *   region: eu-west-1
 *   scopes:
 *     read:
 *       - { Effect: Allow, Action: ["s3:GetObject"], Resource: "arn:aws:s3:::reports/*" }
 * ```
 */
export const AwsAdapterOptions = z
  .object({
    /** The role every lease assumes; the broker must be trusted by it (see docs/aws.md). */
    roleArn: z.string().regex(ROLE_ARN, "an IAM role ARN, arn:aws:iam::<account>:role/<name>"),
    /** The STS region, also handed to the agent with the credential. */
    region: z.string().regex(/^[a-z]{2}(-[a-z]+)+-\d+$/, "an AWS region such as eu-west-1"),
    /** For each scope, the IAM statements its session policy allows; a lease gets the union. */
    scopes: z
      .record(z.string().min(1), z.array(PolicyStatement).min(1, "a scope needs at least one statement"))
      .refine((scopes) => Object.keys(scopes).length > 0, "at least one scope"),
    /** Another STS (and, unless `iamEndpoint` is set, IAM) endpoint: a VPC endpoint, a test fake. */
    endpoint: z.url({ protocol: /^https?$/ }).optional(),
    /** Another IAM endpoint. */
    iamEndpoint: z.url({ protocol: /^https?$/ }).optional(),
    /** Explicit broker credentials; default: the SDK's default provider chain. */
    credentials: ExplicitCredentials.optional(),
    /**
     * The longest session the adapter asks STS for, and so the longest a lease's credential lives.
     * Must not exceed the role's own MaxSessionDuration.
     */
    maxSessionDurationSeconds: z.number().int().min(900).max(43_200).default(3600),
    /** The name of the inline deny policy the adapter keeps on the role. */
    revocationPolicyName: z
      .string()
      .regex(/^[\w+=,.@-]{1,128}$/, "an IAM policy name")
      .default("jitkey-revoked-sessions"),
    /**
     * How large the deny policy may grow (IAM counts characters without white space) before it
     * falls back to revoking every older session of the role. IAM allows 10,240 for all of a
     * role's inline policies together; lower this when the role has other inline policies.
     */
    revocationPolicyMaxChars: z.number().int().min(1024).max(10_240).default(10_240),
    /**
     * Allowance for the broker's clock differing from AWS's: entries stay this long past the
     * credential's expiry, and the fallback cut-off lies this far past the revocation.
     */
    clockSkewSeconds: z.number().int().min(0).max(300).default(5),
    /** Per-request timeout; a timeout is a transient failure. */
    requestTimeoutMs: z.number().int().min(50).max(120_000).default(10_000),
    /** Attempts per AWS call, retries included (the SDK's own retry with backoff). */
    maxAttempts: z.number().int().min(1).max(10).default(3),
  })
  .strict()
  .superRefine((options, ctx) => {
    for (const [scope, statements] of Object.entries(options.scopes)) {
      const size = sessionPolicyFor(statements).length;
      if (size > SESSION_POLICY_MAX_CHARS) {
        ctx.addIssue({
          code: "custom",
          path: ["scopes", scope],
          message: `its session policy is ${size} characters; AWS allows ${SESSION_POLICY_MAX_CHARS}`,
        });
      }
    }
    // A lease may be granted every scope at once: that union must fit too.
    const all = sessionPolicyFor(Object.values(options.scopes).flat());
    if (all.length > SESSION_POLICY_MAX_CHARS) {
      ctx.addIssue({
        code: "custom",
        path: ["scopes"],
        message: `the session policy of all scopes together is ${all.length} characters; AWS allows ${SESSION_POLICY_MAX_CHARS}`,
      });
    }
    const sids = new Map<string, string>();
    for (const statement of Object.values(options.scopes).flat()) {
      if (!statement.Sid) continue;
      const text = JSON.stringify(statement);
      const seen = sids.get(statement.Sid);
      if (seen !== undefined && seen !== text) {
        ctx.addIssue({
          code: "custom",
          path: ["scopes"],
          message: `statement id ${statement.Sid} names two different statements`,
        });
      }
      sids.set(statement.Sid, text);
    }
  });

export type AwsAdapterOptions = z.infer<typeof AwsAdapterOptions>;
