import { JitkeyClient } from "../client/agent-client.ts";
import { detectIdentityToken, type IdentitySourceKind } from "../client/identity.ts";
import { JitkeyOperatorClient } from "../client/operator-client.ts";
import type { CommandIo, ParsedArgs } from "./command.ts";
import { MissingCredentialsError, UsageError } from "./exit-codes.ts";

/**
 * Where the CLI's settings come from: flags first, then the environment. The only place the
 * CLI reads `JITKEY_*` variables, besides the identity sources in `client/identity.ts`.
 */

/** The broker's address from `--broker` or `JITKEY_URL`. */
export function brokerUrl(args: ParsedArgs, io: CommandIo): string {
  const value = args.string("broker") ?? io.env.JITKEY_URL;
  if (!value) throw new UsageError("no broker address: pass --broker URL or set JITKEY_URL");
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`the broker address ${JSON.stringify(value)} is not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new UsageError(`the broker address must be http:// or https://, not ${url.protocol}`);
  return value.replace(/\/+$/, "");
}

/** An agent client with the identity the environment provides (exit 4 when there is none). */
export function agentClient(
  args: ParsedArgs,
  io: CommandIo,
): { client: JitkeyClient; identity: IdentitySourceKind } {
  const broker = brokerUrl(args, io);
  const { kind, provider } = detectIdentityToken(io.env, {
    tokenFile: args.string("identity-token-file"),
    audience: args.string("audience"),
  });
  return { client: new JitkeyClient({ broker, identityToken: provider }), identity: kind };
}

/** An operator client with `JITKEY_OPERATOR_TOKEN` (exit 4 when it is not set). */
export function operatorClient(args: ParsedArgs, io: CommandIo): JitkeyOperatorClient {
  const broker = brokerUrl(args, io);
  const operatorToken = io.env.JITKEY_OPERATOR_TOKEN;
  if (!operatorToken) throw new MissingCredentialsError("set JITKEY_OPERATOR_TOKEN to an operator token");
  return new JitkeyOperatorClient({ broker, operatorToken });
}
