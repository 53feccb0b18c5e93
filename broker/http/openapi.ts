import { z } from "zod";
import {
  ApproveBody,
  AuditEventSchema,
  AuditListQuery,
  AuthorizationServerMetadataSchema,
  CreateTaskBody,
  CredentialSchema,
  DecisionBody,
  DevAgentTokenBody,
  DevAgentTokenSchema,
  ErrorSchema,
  EventsQuery,
  IntrospectBody,
  IntrospectionSchema,
  LeaseId,
  LeaseListQuery,
  LeaseSchema,
  MintLeaseBody,
  OAuthErrorSchema,
  ProtectedResourceMetadataSchema,
  ReadinessSchema,
  RenewLeaseBody,
  ResourceName,
  RevocationBody,
  RevocationSchema,
  TaskEventBody,
  TaskId,
  TaskListQuery,
  TaskReadQuery,
  TaskSchema,
  TimelineEventSchema,
  TimelineQuery,
  TokenExchangeForm,
  TokenExchangeResponseSchema,
} from "./schemas.ts";

type Who = "agent" | "operator" | "introspector" | "anyone";

/** One route as the OpenAPI document (and docs/api.md, checked against it) describes it. */
export interface RouteDoc {
  method: "get" | "post" | "delete";
  path: string;
  summary: string;
  who: Who[];
  body?: z.ZodType;
  /** The body may be left out (every field optional). */
  optionalBody?: boolean;
  query?: z.ZodObject;
  status: number;
  response: z.ZodType;
  /** Media type of the success response; default `application/json`. */
  responseType?: string;
  /** The body may also be form-encoded (RFC 7662 §2.1 introspection requests are); `only`: form-encoded only. */
  form?: boolean | "only";
  /** The `{id}` in the path: a task or a lease id. */
  id?: z.ZodType<string>;
  /** The path parameter's name when it is not `id`. */
  idName?: string;
  /**
   * Error answers, by status, when they are not the jitkey set every authenticated route has:
   * the shape of each (`Error` or the token endpoint's `OAuthError`) and what it means.
   */
  errors?: Record<string, { schema: "Error" | "OAuthError"; description: string }>;
  /** Mounted only in dev mode. */
  devOnly?: boolean;
}

/** Every route the broker serves. */
export const ROUTES: readonly RouteDoc[] = [
  {
    method: "post",
    path: "/v1/tasks",
    summary: "Declare a task",
    who: ["agent"],
    body: CreateTaskBody,
    status: 201,
    response: z.object({ task: TaskSchema }),
  },
  {
    method: "get",
    path: "/v1/tasks",
    summary: "List tasks",
    who: ["operator"],
    query: TaskListQuery,
    status: 200,
    response: z.object({ tasks: z.array(TaskSchema) }),
  },
  {
    method: "get",
    path: "/v1/tasks/{id}",
    id: TaskId,
    summary: "Read a task; with waitSeconds, wait until it is no longer pending",
    who: ["agent", "operator"],
    query: TaskReadQuery,
    status: 200,
    response: z.object({ task: TaskSchema }),
  },
  {
    method: "post",
    path: "/v1/tasks/{id}/approve",
    id: TaskId,
    summary:
      "Approve a pending task, optionally narrowed (fewer resources or scopes, a shorter life); restricted data needs two distinct operators",
    who: ["operator"],
    body: ApproveBody,
    optionalBody: true,
    status: 200,
    response: z.object({ task: TaskSchema }),
  },
  {
    method: "post",
    path: "/v1/tasks/{id}/deny",
    id: TaskId,
    summary: "Deny a pending task",
    who: ["operator"],
    body: DecisionBody,
    optionalBody: true,
    status: 200,
    response: z.object({ task: TaskSchema }),
  },
  {
    method: "post",
    path: "/v1/tasks/{id}/events",
    id: TaskId,
    summary:
      "Record a tool call made for an approved task (the owner agent, or a tool server about a lease of its resource)",
    who: ["agent", "introspector"],
    body: TaskEventBody,
    status: 201,
    response: z.object({ event: AuditEventSchema }),
  },
  {
    method: "get",
    path: "/v1/tasks/{id}/timeline",
    id: TaskId,
    summary:
      "The task's audit events in order, each labelled: identity, approval, policy, lease, tool_call, revocation",
    who: ["agent", "operator"],
    query: TimelineQuery,
    status: 200,
    response: z.object({ events: z.array(TimelineEventSchema) }),
  },
  {
    method: "post",
    path: "/v1/tasks/{id}/complete",
    id: TaskId,
    summary: "Complete a task and revoke its leases",
    who: ["agent", "operator"],
    status: 200,
    response: z.object({ task: TaskSchema, revoking: z.number().int() }),
  },
  {
    method: "post",
    path: "/v1/tasks/{id}/leases",
    id: TaskId,
    summary: "Mint a lease (the credential is returned once)",
    who: ["agent"],
    body: MintLeaseBody,
    status: 201,
    response: z.object({ lease: LeaseSchema, credential: CredentialSchema }),
  },
  {
    method: "get",
    path: "/v1/leases",
    summary: "List leases",
    who: ["operator"],
    query: LeaseListQuery,
    status: 200,
    response: z.object({ leases: z.array(LeaseSchema) }),
  },
  {
    method: "get",
    path: "/v1/leases/{id}",
    id: LeaseId,
    summary: "Read a lease (never the secret)",
    who: ["agent", "operator"],
    status: 200,
    response: z.object({ lease: LeaseSchema }),
  },
  {
    method: "post",
    path: "/v1/leases/{id}/renew",
    summary: "Extend an active lease whose backend can extend credentials (policy is evaluated again)",
    who: ["agent"],
    body: RenewLeaseBody,
    status: 200,
    response: z.object({ lease: LeaseSchema }),
  },
  {
    method: "delete",
    path: "/v1/leases/{id}",
    id: LeaseId,
    summary: "Release a lease early",
    who: ["agent", "operator"],
    status: 202,
    response: z.object({ lease: LeaseSchema }),
  },
  {
    method: "post",
    path: "/v1/revocations",
    summary: "Force revocation",
    who: ["operator"],
    body: RevocationBody,
    status: 202,
    response: RevocationSchema,
  },
  {
    method: "post",
    path: "/v1/introspect",
    summary: "RFC 7662 token introspection",
    who: ["introspector", "operator"],
    body: IntrospectBody,
    form: true,
    status: 200,
    response: IntrospectionSchema,
  },
  {
    method: "post",
    path: "/v1/token",
    summary:
      "RFC 8693 token exchange: a narrower credential, delegated to a sub-agent, from a live jwt credential the caller holds",
    who: ["agent"],
    body: TokenExchangeForm,
    form: "only",
    status: 200,
    response: TokenExchangeResponseSchema,
    errors: {
      "400": {
        schema: "OAuthError",
        description:
          "invalid_request, invalid_grant, invalid_scope, invalid_target, unsupported_grant_type or invalid_dpop_proof",
      },
      "401": { schema: "OAuthError", description: "invalid_client" },
      "413": { schema: "Error", description: "invalid_request (body too large)" },
      "415": { schema: "Error", description: "invalid_request (Content-Encoding or charset not accepted)" },
      "429": { schema: "Error", description: "rate_limited (with Retry-After)" },
      "500": { schema: "Error", description: "internal (carries a requestId, nothing else)" },
      "502": { schema: "Error", description: "adapter_unavailable" },
      "503": { schema: "Error", description: "unavailable (with Retry-After)" },
    },
  },
  {
    method: "get",
    path: "/.well-known/oauth-authorization-server",
    summary: "RFC 8414 authorization server metadata",
    who: ["anyone"],
    status: 200,
    response: AuthorizationServerMetadataSchema,
  },
  {
    method: "get",
    path: "/v1/protected-resources/{name}",
    id: ResourceName,
    idName: "name",
    summary:
      "RFC 9728 protected resource metadata of a resource with broker-signed credentials, for its resource server to serve",
    who: ["anyone"],
    status: 200,
    response: ProtectedResourceMetadataSchema,
    errors: {
      "404": {
        schema: "Error",
        description: "not_found: no such resource, or its credentials are not tokens with a URL audience",
      },
      "503": { schema: "Error", description: "unavailable (with Retry-After)" },
    },
  },
  {
    method: "get",
    path: "/v1/audit",
    summary: "Audit events, oldest first",
    who: ["operator"],
    query: AuditListQuery,
    status: 200,
    response: z.object({ events: z.array(AuditEventSchema) }),
  },
  {
    method: "post",
    path: "/v1/dev/agent-token",
    summary: "Dev mode only: sign a dev identity token for an agent",
    who: ["operator"],
    body: DevAgentTokenBody,
    status: 200,
    response: DevAgentTokenSchema,
    devOnly: true,
  },
  {
    method: "get",
    path: "/v1/audit/verify",
    summary: "Recompute the audit hash chains and check them against the signed checkpoints",
    who: ["operator"],
    status: 200,
    response: z.union([
      z.object({ ok: z.literal(true), events: z.number(), checkpoints: z.number(), unsealed: z.number() }),
      z.object({ ok: z.literal(false), brokenAt: z.string(), reason: z.string(), events: z.number() }),
    ]),
  },
  {
    method: "get",
    path: "/v1/audit/export",
    summary: "The whole audit trail with its signed checkpoints and the broker's public keys, as JSON Lines",
    who: ["operator"],
    status: 200,
    response: z
      .string()
      .describe("application/x-ndjson: a header line, then per shard its checkpoints and events"),
    responseType: "application/x-ndjson",
  },
  {
    method: "get",
    path: "/v1/events",
    summary:
      "Server-Sent Events: task_pending, task_approved, task_denied, task_completed, task_expired, task_revoked, lease_revoked, lease_revoke_failed as they happen; Last-Event-ID resumes",
    who: ["operator"],
    query: EventsQuery,
    status: 200,
    response: z
      .string()
      .describe("text/event-stream: `id`, `event` (the name) and `data` (the audit event as JSON)"),
    responseType: "text/event-stream",
  },
  {
    method: "get",
    path: "/.well-known/jwks.json",
    summary: "Public keys of broker-signed credentials",
    who: ["anyone"],
    status: 200,
    response: z.object({ keys: z.array(z.record(z.string(), z.unknown())) }),
  },
  {
    method: "get",
    path: "/healthz",
    summary: "Liveness",
    who: ["anyone"],
    status: 200,
    response: z.object({ status: z.string() }),
  },
  {
    method: "get",
    path: "/readyz",
    summary: "Readiness: Redis reachable, workers attached (503 with the same body when not)",
    who: ["anyone"],
    status: 200,
    response: ReadinessSchema,
  },
  {
    method: "get",
    path: "/metrics",
    summary: "Prometheus metrics",
    who: ["anyone"],
    status: 200,
    response: z.string(),
    responseType: "text/plain; version=0.0.4",
  },
  {
    method: "get",
    path: "/openapi.json",
    summary: "This OpenAPI 3.1 document",
    who: ["anyone"],
    status: 200,
    response: z.record(z.string(), z.unknown()),
  },
];

/** Error answers of every authenticated route, by status. */
export const ERROR_STATUSES: Record<string, string> = {
  "400": "invalid_request",
  "401": "unauthenticated",
  "403": "forbidden or policy_denied",
  "404": "not_found",
  "409": "task_not_approved, task_closed, lease_revoked, lease_not_renewable or duplicate_approval",
  "413": "invalid_request (body too large)",
  "415": "invalid_request (Content-Type, Content-Encoding or charset not accepted)",
  "422": "invalid_request (well-formed, but names what does not exist)",
  "429": "rate_limited (with Retry-After): a request limit, or a quota (`quota` names it)",
  "500": "internal (carries a requestId, nothing else)",
  "502": "adapter_unavailable",
  "503": "unavailable (with Retry-After): Redis unreachable, starting or draining",
};

/**
 * The OpenAPI 3.1 document, generated from the same zod schemas that validate requests.
 * `devMode` adds the dev-only routes.
 */
export function buildOpenApi(
  serverUrl: string,
  options: { devMode?: boolean } = {},
): Record<string, unknown> {
  const json = (schema: z.ZodType, io: "input" | "output") => {
    // The document declares its dialect once; a `$schema` inside each schema would be noise.
    const { $schema: _dialect, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: "any" });
    return rest;
  };
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of ROUTES) {
    if (route.devOnly && !options.devMode) continue;
    const parameters: unknown[] = [];
    if (route.id)
      parameters.push({
        name: route.idName ?? "id",
        in: "path",
        required: true,
        schema: json(route.id, "input"),
      });
    for (const [name, schema] of Object.entries(route.query?.shape ?? {})) {
      parameters.push({ name, in: "query", required: false, schema: json(schema as z.ZodType, "input") });
    }
    const responses: Record<string, unknown> = {
      [route.status]: {
        description: "Success",
        content: { [route.responseType ?? "application/json"]: { schema: json(route.response, "output") } },
      },
    };
    if (route.errors) {
      for (const [status, { schema, description }] of Object.entries(route.errors)) {
        responses[status] = {
          description,
          content: { "application/json": { schema: { $ref: `#/components/schemas/${schema}` } } },
        };
      }
    } else if (!route.who.includes("anyone")) {
      for (const [status, codes] of Object.entries(ERROR_STATUSES)) {
        responses[status] = {
          description: codes,
          content: { "application/json": { schema: { $ref: "#/components/schemas/Error" } } },
        };
      }
    }
    if (route.path === "/readyz") {
      responses["503"] = {
        description: "Not ready: Redis unreachable or no worker attached",
        content: { "application/json": { schema: json(route.response, "output") } },
      };
    }
    paths[route.path] = {
      ...paths[route.path],
      [route.method]: {
        summary: route.summary,
        description: `Caller: ${route.who.join(" or ")}`,
        security: route.who.includes("anyone") ? [] : [{ bearer: [] }],
        parameters,
        ...(route.body
          ? {
              requestBody: {
                required: route.method === "post" && !route.optionalBody,
                content: {
                  ...(route.form === "only"
                    ? {}
                    : { "application/json": { schema: json(route.body, "input") } }),
                  ...(route.form
                    ? { "application/x-www-form-urlencoded": { schema: json(route.body, "input") } }
                    : {}),
                },
              },
            }
          : {}),
        responses,
      },
    };
  }
  return {
    openapi: "3.1.0",
    jsonSchemaDialect: "https://json-schema.org/draft/2020-12/schema",
    info: {
      title: "jitkey",
      version: "1",
      description: "Just-in-time, task-scoped, short-lived credentials",
    },
    servers: [{ url: serverUrl }],
    components: {
      securitySchemes: {
        bearer: {
          type: "http",
          scheme: "bearer",
          description: "Agent identity JWT, operator or introspector token",
        },
      },
      schemas: { Error: json(ErrorSchema, "output"), OAuthError: json(OAuthErrorSchema, "output") },
    },
    paths,
  };
}
