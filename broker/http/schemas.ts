import { z } from "zod";
import { AUDIT_EVENT_TYPES } from "../audit/audit-log.ts";
import { CLASSIFICATIONS, NOTIFICATION_EVENTS } from "../config.ts";
import { LEASE_STATUSES, REVOKE_REASONS } from "../leases/lease.ts";
import { OAUTH_ERROR_CODES } from "../oauth/oauth-error.ts";
import { TASK_STATUSES } from "../tasks/task.ts";
import { TIMELINE_CATEGORIES } from "../tasks/task-timeline.ts";

/** Request and response shapes; validation and /openapi.json both come from these. */

/** Task and lease ids as the broker makes them (`tsk_` + base64url), with room to spare. */
export const TaskId = z.string().regex(/^tsk_[A-Za-z0-9_-]{1,43}$/, "a task id (tsk_…)");
export const LeaseId = z.string().regex(/^lse_[A-Za-z0-9_-]{1,43}$/, "a lease id (lse_…)");
/** `<issuer name>:<claim>`; the claim is the issuer's to choose, so only its length is bounded. */
const agentId = z.string().min(3).max(512);
const resourceName = z.string().min(1).max(64);
const scopes = z
  .array(z.string().min(1).max(128))
  .min(1)
  .max(32)
  .refine((list) => new Set(list).size === list.length, "a scope is listed twice");
const limit = z.coerce.number().int().min(1).max(1000).default(100);

/**
 * Characters that make text shown to an approver read differently from what it holds: control
 * characters (NUL, newlines, escapes), bidirectional overrides, embeddings, isolates and marks,
 * invisible separators and the byte-order mark.
 */
const DECEPTIVE_CHARACTERS = /[\p{Cc}\u061C\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]/u;

/** Free text a person will read: printable characters only, trimmed, `min` to `max` long. */
function humanText(min: number, max: number) {
  return z
    .string()
    .trim()
    .min(min)
    .max(max)
    .refine((text) => !DECEPTIVE_CHARACTERS.test(text), {
      message: "control, bidirectional-override and invisible characters are not allowed",
    });
}

/** An audit event id, as `after` takes it: `<milliseconds>-<sequence>-<shard>`. */
export const AuditCursor = z
  .string()
  .regex(/^\d{1,15}-\d{1,15}-\d{1,3}$/, "an audit event id, e.g. 1718000000000-0-3");

/** Resources with their scopes, each resource once. */
const resourceGrants = z
  .array(z.object({ resource: resourceName, scopes }).strict())
  .min(1)
  .max(20)
  .refine(
    (list) => new Set(list.map((entry) => entry?.resource)).size === list.length,
    "a resource is listed twice: give each resource once, with all its scopes",
  );

export const CreateTaskBody = z
  .object({
    goal: humanText(1, 2000).describe("What the agent will do, in words an approver can judge"),
    resources: resourceGrants,
    dataClassification: z.enum(CLASSIFICATIONS).optional(),
    ttlSeconds: z.number().int().min(1).optional(),
  })
  .strict();

export const DecisionBody = z.object({ note: humanText(0, 1000).optional() }).strict();

export const ApproveBody = z
  .object({
    note: humanText(0, 1000).optional(),
    resources: resourceGrants
      .optional()
      .describe(
        "Approve only these resources and scopes (each must be the task's); resources not named are dropped",
      ),
    ttlSeconds: z
      .number()
      .int()
      .min(1)
      .optional()
      .describe("The task ends at most this many seconds after this approval; never later than it would"),
  })
  .strict();

/** Names of tools, actions and targets: one line of printable text. */
const toolText = (max: number) => humanText(1, max);

export const TaskEventBody = z
  .object({
    type: z.literal("tool_call"),
    leaseId: LeaseId.optional().describe(
      "The lease whose credential the call used; required of tool servers",
    ),
    tool: toolText(128).describe("The tool, e.g. github or mcp:filesystem"),
    action: toolText(128).describe("What it was asked to do, e.g. create_issue"),
    target: toolText(512).optional().describe("What it acted on, e.g. a repository or a table"),
    outcome: z.enum(["ok", "error", "denied"]).optional(),
    detail: humanText(1, 2000).optional(),
  })
  .strict();

export const MintLeaseBody = z
  .object({
    resource: resourceName,
    scopes: scopes.optional(),
    ttlSeconds: z.number().int().min(1).optional(),
  })
  .strict();

export const RenewLeaseBody = z
  .object({
    ttlSeconds: z.number().int().min(1).optional().describe("From now; default the most policy allows"),
  })
  .strict();

export const RevocationBody = z
  .object({
    leaseId: LeaseId.optional(),
    taskId: TaskId.optional(),
    agentId: agentId.optional(),
    resource: resourceName.optional(),
    all: z.literal(true).optional(),
    reason: humanText(1, 500),
  })
  .strict();

export const IntrospectBody = z.object({
  token: z.string().min(1).max(16_384),
  token_type_hint: z.string().max(64).optional(),
});

export const DevAgentTokenBody = z
  .object({
    agent: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9:._/@-]{0,127}$/)
      .default("demo-agent"),
    ttlSeconds: z.number().int().min(1).max(3600).optional(),
  })
  .strict();

export const TaskReadQuery = z
  .object({
    waitSeconds: z.coerce
      .number()
      .int()
      .min(0)
      .max(60)
      .optional()
      .describe("Long-poll: answer as soon as the task is no longer pending, or after this many seconds"),
  })
  .strict();

export const EventsQuery = z
  .object({
    types: z
      .string()
      .max(512)
      .transform((list) => list.split(",").map((type) => type.trim()))
      .pipe(z.array(z.enum(NOTIFICATION_EVENTS)).min(1))
      .optional()
      .describe("Comma-separated event names to stream; default all"),
  })
  .strict();

export const TaskListQuery = z
  .object({ status: z.enum(TASK_STATUSES).optional(), agentId: agentId.optional(), limit })
  .strict();

export const LeaseListQuery = z
  .object({
    status: z.enum(LEASE_STATUSES).optional(),
    taskId: TaskId.optional(),
    agentId: agentId.optional(),
    resource: resourceName.optional(),
    limit,
  })
  .strict();

export const AuditListQuery = z
  .object({
    taskId: TaskId.optional(),
    agentId: agentId.optional(),
    leaseId: LeaseId.optional(),
    after: AuditCursor.optional(),
    limit,
  })
  .strict();

export const TimelineQuery = z.object({ after: AuditCursor.optional(), limit }).strict();

const taskResources = z.array(
  z.object({ resource: z.string(), scopes: z.array(z.string()), owner: z.string().optional() }),
);

const TaskGrantSchema = z.object({ resources: taskResources, expiresAt: z.iso.datetime() });

export const TaskSchema = z.object({
  id: TaskId,
  agentId: z.string(),
  agentOwner: z.string().optional(),
  goal: z.string(),
  resources: taskResources.describe("What the task may mint for: as asked, or as approvals narrowed it"),
  dataClassification: z.enum(CLASSIFICATIONS),
  status: z.enum(TASK_STATUSES),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  approvedAt: z.iso.datetime().optional(),
  approvedBy: z.string().optional(),
  approvalsRequired: z
    .number()
    .int()
    .optional()
    .describe("Distinct operators who must approve: 2 when the task touches restricted data"),
  approvals: z
    .array(
      z.object({
        by: z.string(),
        at: z.iso.datetime(),
        note: z.string().optional(),
        narrowedTo: TaskGrantSchema.optional(),
      }),
    )
    .optional(),
  requested: TaskGrantSchema.optional().describe("What was asked, once an approval narrowed it"),
  deniedAt: z.iso.datetime().optional(),
  deniedBy: z.string().optional(),
  note: z.string().optional(),
  closedAt: z.iso.datetime().optional(),
  closedBy: z
    .string()
    .optional()
    .describe("Who ended the task: an actor such as agent:<id> or operator:<name>"),
  closedReason: z
    .string()
    .optional()
    .describe("Why, when the status does not say it: approval_unused (approved, nothing minted in time)"),
});

export const LeaseSchema = z.object({
  id: LeaseId,
  taskId: TaskId,
  agentId: z.string(),
  resource: z.string(),
  adapter: z.string(),
  scopes: z.array(z.string()),
  issuedAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  status: z.enum(LEASE_STATUSES),
  revocable: z.boolean(),
  revocation: z.enum(["backend", "introspection", "none"]),
  renewedAt: z.iso.datetime().optional(),
  revokeReason: z.enum(REVOKE_REASONS).optional(),
  revokeRequestedAt: z.iso.datetime().optional(),
  revokeRequestedBy: z.string().optional(),
  revokedAt: z.iso.datetime().optional(),
  revokeFailedAt: z.iso.datetime().optional(),
  lastError: z.string().optional().describe("Why the last revocation attempt failed (never a secret)"),
  dpopJkt: z
    .string()
    .optional()
    .describe("RFC 7638 thumbprint of the key the credential is bound to (DPoP cnf.jkt)"),
  parentLeaseId: LeaseId.optional().describe("A delegated lease: the lease it was exchanged from"),
  delegationDepth: z.number().int().optional().describe("Hops from the lease minted directly"),
  actors: z
    .array(z.string())
    .optional()
    .describe("A delegated lease: who holds it, then who held it before (the act chain)"),
  delegatedBy: z.string().optional().describe("A delegated lease: the agent that exchanged the parent"),
});

export const CredentialSchema = z
  .object({ type: z.string(), expiresAt: z.iso.datetime() })
  .catchall(z.unknown())
  .describe("Returned once, never stored. Shape depends on the adapter");

export const AuditEventSchema = z
  .object({
    id: z.string(),
    at: z.iso.datetime(),
    type: z.enum(AUDIT_EVENT_TYPES),
    actor: z.string(),
    agentId: z.string().optional(),
    taskId: z.string().optional(),
    leaseId: z.string().optional(),
    decision: z.enum(["allow", "deny"]).optional(),
    reason: z.string().optional(),
  })
  .catchall(z.unknown());

export const TimelineEventSchema = AuditEventSchema.extend({ category: z.enum(TIMELINE_CATEGORIES) });

export const ErrorSchema = z.object({
  error: z
    .object({ code: z.string(), message: z.string(), requestId: z.string().optional() })
    .catchall(z.unknown()),
});

const PurposeSchema = z
  .object({ goal_sha256: z.string(), classification: z.enum(CLASSIFICATIONS) })
  .describe("The task's purpose: SHA-256 (hex) of its goal, and its data classification");

const ActSchema = z
  .object({ sub: z.string() })
  .catchall(z.unknown())
  .describe("RFC 8693 act: the current holder of a delegated credential; earlier ones nested in act");

export const IntrospectionSchema = z
  .object({
    active: z.boolean(),
    scope: z.string().optional(),
    client_id: z.string().optional().describe("The agent the credential was minted for"),
    sub: z.string().optional(),
    aud: z.union([z.string(), z.array(z.string())]).optional(),
    iss: z.string().optional(),
    exp: z.number().int().optional(),
    iat: z.number().int().optional(),
    nbf: z.number().int().optional(),
    jti: z.string().optional().describe("The lease id"),
    token_type: z.enum(["Bearer", "DPoP"]).optional(),
    task_id: z.string().optional(),
    resource: z.string().optional().describe("The resource the credential is for"),
    purpose: PurposeSchema.optional(),
    cnf: z
      .object({ jkt: z.string() })
      .optional()
      .describe("The key the presenter must prove with a DPoP proof (RFC 9449 §6.2)"),
    act: ActSchema.optional(),
  })
  .describe("RFC 7662 introspection response; an inactive answer holds only active: false");

export const ReadinessSchema = z.object({
  status: z.enum(["ready", "not_ready"]),
  redis: z.boolean().describe("Redis answered a PING"),
  workers: z.number().int().describe("Revocation workers attached to the queue"),
});

export const DevAgentTokenSchema = z.object({ agentId: z.string(), token: z.string() });

export const RevocationSchema = z.object({
  revocation: z.object({
    id: z.string(),
    selector: z.object({
      leaseId: z.string().optional(),
      taskId: z.string().optional(),
      agentId: z.string().optional(),
      resource: z.string().optional(),
      all: z.boolean().optional(),
    }),
    reason: z.string(),
    requestedBy: z.string(),
    requestedAt: z.iso.datetime(),
    matched: z.number().int().describe("Leases moved to revoking by this request"),
    tasksRevoked: z.number().int().describe("Live tasks ended as revoked by this request"),
  }),
});

/** The token exchange form (RFC 8693 §2.1); parsed by the token endpoint itself, shown here for the document. */
export const TokenExchangeForm = z.object({
  grant_type: z.literal("urn:ietf:params:oauth:grant-type:token-exchange"),
  subject_token: z.string().describe("The parent jwt credential"),
  subject_token_type: z.enum([
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:access_token",
  ]),
  actor_token: z.string().optional().describe("The sub-agent's identity JWT; default the caller"),
  actor_token_type: z
    .enum(["urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"])
    .optional(),
  scope: z.string().optional().describe("Space-separated, a subset of the parent's; default the parent's"),
  resource: z.string().optional().describe("RFC 8707: the parent's resource identifier (its audience)"),
  audience: z.string().optional().describe("The parent's resource name or audience"),
  requested_token_type: z.string().optional(),
  requested_ttl: z.string().optional().describe("Seconds; the credential never outlives its parent"),
  dpop_jkt: z.string().optional().describe("RFC 9449 §10: bind the new credential to this key thumbprint"),
  client_assertion_type: z.literal("urn:ietf:params:oauth:client-assertion-type:jwt-bearer").optional(),
  client_assertion: z.string().optional().describe("RFC 7523: the caller's identity JWT (instead of Bearer)"),
  client_id: z.string().optional().describe("With client_assertion: the agent id it names"),
});

export const TokenExchangeResponseSchema = z.object({
  access_token: z.string(),
  issued_token_type: z.string(),
  token_type: z.enum(["Bearer", "DPoP"]),
  expires_in: z.number().int().positive(),
  scope: z.string(),
});

export const OAuthErrorSchema = z.object({
  error: z.enum(OAUTH_ERROR_CODES),
  error_description: z.string().optional(),
  request_id: z.string().optional(),
});

export const AuthorizationServerMetadataSchema = z
  .object({
    issuer: z.string(),
    token_endpoint: z.string(),
    introspection_endpoint: z.string(),
    jwks_uri: z.string(),
    response_types_supported: z.array(z.string()),
    grant_types_supported: z.array(z.string()),
    token_endpoint_auth_methods_supported: z.array(z.string()),
    token_endpoint_auth_signing_alg_values_supported: z.array(z.string()),
    introspection_endpoint_auth_methods_supported: z.array(z.string()),
    dpop_signing_alg_values_supported: z.array(z.string()),
  })
  .describe("RFC 8414 authorization server metadata");

export const ProtectedResourceMetadataSchema = z
  .object({
    resource: z.string(),
    authorization_servers: z.array(z.string()),
    scopes_supported: z.array(z.string()),
    bearer_methods_supported: z.array(z.string()),
    resource_name: z.string(),
    dpop_signing_alg_values_supported: z.array(z.string()),
    dpop_bound_access_tokens_required: z.boolean(),
  })
  .describe("RFC 9728 protected resource metadata, for the resource server to serve as its own");

export const ResourceName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "a resource name");
