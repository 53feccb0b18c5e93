import { z } from "zod";
import { AUDIT_EVENT_TYPES } from "../audit/audit-log.ts";
import { CLASSIFICATIONS, NOTIFICATION_EVENTS } from "../config.ts";
import { LEASE_STATUSES, REVOKE_REASONS } from "../leases/lease.ts";
import { TASK_STATUSES } from "../tasks/task.ts";

/** Request and response shapes; validation and /openapi.json both come from these. */

const id = z.string().min(1).max(128);
const resourceName = z.string().min(1).max(64);
const scopes = z.array(z.string().min(1).max(128)).min(1).max(32);
const limit = z.coerce.number().int().min(1).max(1000).default(100);

export const CreateTaskBody = z
  .object({
    goal: z
      .string()
      .trim()
      .min(1)
      .max(2000)
      .describe("What the agent will do, in words an approver can judge"),
    resources: z
      .array(z.object({ resource: resourceName, scopes }).strict())
      .min(1)
      .max(20),
    dataClassification: z.enum(CLASSIFICATIONS).optional(),
    ttlSeconds: z.number().int().min(1).optional(),
  })
  .strict();

export const DecisionBody = z.object({ note: z.string().max(1000).optional() }).strict();

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
    leaseId: id.optional(),
    taskId: id.optional(),
    agentId: id.optional(),
    resource: resourceName.optional(),
    all: z.literal(true).optional(),
    reason: z.string().trim().min(1).max(500),
  })
  .strict();

export const IntrospectBody = z.object({
  token: z.string().min(1).max(16_384),
  token_type_hint: z.string().optional(),
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
  .object({ status: z.enum(TASK_STATUSES).optional(), agentId: id.optional(), limit })
  .strict();

export const LeaseListQuery = z
  .object({
    status: z.enum(LEASE_STATUSES).optional(),
    taskId: id.optional(),
    agentId: id.optional(),
    resource: resourceName.optional(),
    limit,
  })
  .strict();

export const AuditListQuery = z
  .object({
    taskId: id.optional(),
    agentId: id.optional(),
    leaseId: id.optional(),
    after: id.optional(),
    limit,
  })
  .strict();

export const TaskSchema = z.object({
  id,
  agentId: z.string(),
  agentOwner: z.string().optional(),
  goal: z.string(),
  resources: z.array(
    z.object({ resource: z.string(), scopes: z.array(z.string()), owner: z.string().optional() }),
  ),
  dataClassification: z.enum(CLASSIFICATIONS),
  status: z.enum(TASK_STATUSES),
  createdAt: z.iso.datetime(),
  expiresAt: z.iso.datetime(),
  approvedAt: z.iso.datetime().optional(),
  approvedBy: z.string().optional(),
  note: z.string().optional(),
  closedAt: z.iso.datetime().optional(),
});

export const LeaseSchema = z.object({
  id,
  taskId: id,
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
  revokedAt: z.iso.datetime().optional(),
  revokeReason: z.enum(REVOKE_REASONS).optional(),
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

export const ErrorSchema = z.object({
  error: z
    .object({ code: z.string(), message: z.string(), requestId: z.string().optional() })
    .catchall(z.unknown()),
});

export const IntrospectionSchema = z
  .object({
    active: z.boolean(),
    scope: z.string().optional(),
    sub: z.string().optional(),
    aud: z.union([z.string(), z.array(z.string())]).optional(),
    iss: z.string().optional(),
    exp: z.number().optional(),
    iat: z.number().optional(),
    jti: z.string().optional(),
    token_type: z.string().optional(),
    task_id: z.string().optional(),
  })
  .describe("RFC 7662 introspection response");
