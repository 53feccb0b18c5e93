/**
 * `jitkey/client`: a typed client of the jitkey broker for agents (`JitkeyClient`) and
 * operators (`JitkeyOperatorClient`). Uses the global `fetch`; no other dependency.
 *
 * @packageDocumentation
 */
export {
  JitkeyClient,
  type JitkeyClientOptions,
  type MintOptions,
  TaskHandle,
  type WaitForApprovalOptions,
  type WithTaskRequest,
} from "./agent-client.ts";
export {
  AdapterUnavailableError,
  type ApiErrorBody,
  ApprovalDeniedError,
  ApprovalTimeoutError,
  apiError,
  BrokerUnreachableError,
  ForbiddenError,
  InternalError,
  InvalidRequestError,
  JitkeyApiError,
  JitkeyClientError,
  LeaseRevokedError,
  NotFoundError,
  PolicyDeniedError,
  RateLimitedError,
  TaskClosedError,
  TaskNotApprovedError,
  UnauthenticatedError,
  UnavailableError,
} from "./errors.ts";
export {
  detectIdentityToken,
  type GitHubActionsTokenEndpoint,
  githubActionsIdentityToken,
  type IdentityOptions,
  type IdentitySourceKind,
  type IdentityTokenProvider,
  IdentityUnavailableError,
  identityTokenFromFile,
} from "./identity.ts";
export {
  type AuditQuery,
  type AuditStreamOptions,
  JitkeyOperatorClient,
  type JitkeyOperatorClientOptions,
  type RevocationTarget,
} from "./operator-client.ts";
export type { RetryOptions, TokenSource } from "./transport.ts";
export type {
  AuditEvent,
  AuditVerification,
  Classification,
  Credential,
  Lease,
  LeaseStatus,
  MintedLease,
  Revocation,
  Task,
  TaskRequest,
  TaskResource,
  TaskStatus,
} from "./types.ts";
