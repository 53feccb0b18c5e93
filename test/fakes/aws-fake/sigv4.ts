/**
 * Verification of AWS Signature Version 4 for the AWS fake, following the "Create a signed AWS
 * API request" steps of the IAM User Guide: canonical request, string to sign, HMAC-SHA256
 * signing-key chain from the date, region and service, hex signature. Only the
 * `Authorization`-header form (what the SDK sends), not presigned query strings; the request
 * time is not checked against the fake's clock, which tests move at will.
 */
import { createHash, createHmac } from "node:crypto";

/** Why a signature was refused, as the AWS error code a real endpoint would answer with. */
export class SignatureError extends Error {
  constructor(
    readonly code:
      | "MissingAuthenticationToken"
      | "IncompleteSignature"
      | "InvalidClientTokenId"
      | "SignatureDoesNotMatch",
    message: string,
  ) {
    super(message);
  }
}

/** What the credential scope of a valid signature says. */
export interface SignedBy {
  readonly accessKeyId: string;
  readonly date: string;
  readonly region: string;
  readonly service: string;
  /** `x-amz-security-token`, for temporary credentials. */
  readonly sessionToken: string | undefined;
}

/** The parts of an HTTP request the signature covers. Header names lower-case. */
export interface SignableRequest {
  readonly method: string;
  /** Path and query as sent, e.g. `/` or `/?Action=...`. */
  readonly target: string;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Buffer;
}

const AUTHORIZATION =
  /^AWS4-HMAC-SHA256 Credential=([^/\s]+)\/(\d{8})\/([^/\s]+)\/([^/\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/;

const sha256 = (data: string | Buffer) => createHash("sha256").update(data).digest("hex");
const hmac = (key: string | Buffer, data: string) => createHmac("sha256", key).update(data).digest();

/** RFC 3986 percent-encoding, as SigV4 requires (encodeURIComponent leaves `!'()*` alone). */
function uriEncode(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

function header(request: SignableRequest, name: string): string | undefined {
  const value = request.headers[name];
  return Array.isArray(value) ? value.join(",") : value;
}

/**
 * Checks the request's SigV4 signature against the secret of the access key it names.
 * Throws {@link SignatureError}; returns the credential scope when the signature is valid.
 */
export function verifySigV4(
  request: SignableRequest,
  secretOf: (accessKeyId: string) => string | undefined,
): SignedBy {
  const authorization = header(request, "authorization");
  if (!authorization)
    throw new SignatureError("MissingAuthenticationToken", "Request is missing Authentication Token");
  const match = AUTHORIZATION.exec(authorization);
  if (!match) {
    throw new SignatureError(
      "IncompleteSignature",
      "Authorization header requires Credential, SignedHeaders and Signature",
    );
  }
  const [, accessKeyId = "", date = "", region = "", service = "", signedHeaderList = "", signature] = match;
  const amzDate = header(request, "x-amz-date") ?? "";
  if (!amzDate.startsWith(date) || !/^\d{8}T\d{6}Z$/.test(amzDate)) {
    throw new SignatureError(
      "IncompleteSignature",
      "X-Amz-Date is missing or does not match the credential scope",
    );
  }
  const signedHeaders = signedHeaderList.split(";");
  if (!signedHeaders.includes("host") || !signedHeaders.includes("x-amz-date")) {
    throw new SignatureError("IncompleteSignature", "the host and x-amz-date headers must be signed");
  }
  const secret = secretOf(accessKeyId);
  if (secret === undefined) {
    throw new SignatureError(
      "InvalidClientTokenId",
      "The security token included in the request is invalid.",
    );
  }

  const url = new URL(request.target, "http://fake.invalid");
  const query = [...url.searchParams.entries()]
    .map(([key, value]) => [uriEncode(key), uriEncode(value)] as const)
    .sort(([a, x], [b, y]) => (a === b ? (x < y ? -1 : 1) : a < b ? -1 : 1))
    .map(([key, value]) => `${key}=${value}`)
    .join("&");
  const canonicalHeaders = signedHeaders
    .map((name) => `${name}:${(header(request, name) ?? "").trim().replace(/\s+/g, " ")}\n`)
    .join("");
  const payloadHash = header(request, "x-amz-content-sha256") ?? sha256(request.body);
  const canonicalRequest = [
    request.method,
    url.pathname,
    query,
    canonicalHeaders,
    signedHeaderList,
    payloadHash,
  ].join("\n");
  const scope = `${date}/${region}/${service}/aws4_request`;
  const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonicalRequest)].join("\n");
  const signingKey = hmac(hmac(hmac(hmac(`AWS4${secret}`, date), region), service), "aws4_request");
  const expected = createHmac("sha256", signingKey).update(stringToSign).digest("hex");
  if (expected !== signature) {
    throw new SignatureError(
      "SignatureDoesNotMatch",
      "The request signature we calculated does not match the signature you provided.",
    );
  }
  return { accessKeyId, date, region, service, sessionToken: header(request, "x-amz-security-token") };
}
