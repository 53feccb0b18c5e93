import { hostname, userInfo } from "node:os";
import { basename } from "node:path";

/** The API's limit on a goal's length. */
const MAX_GOAL_LENGTH = 2000;

/**
 * The goal an approver sees when none was given: the CI run (repository, workflow, run id
 * and URL on GitHub Actions; project, pipeline and job URL on GitLab CI), else the program
 * and where it runs.
 */
export function defaultGoal(env: Record<string, string | undefined>, what: string): string {
  return truncate(ciRunDescription(env, what) ?? localDescription(what));
}

function ciRunDescription(env: Record<string, string | undefined>, what: string): string | undefined {
  if (env.GITHUB_ACTIONS === "true" || env.GITHUB_RUN_ID) {
    const repository = env.GITHUB_REPOSITORY ?? "unknown repository";
    const parts = [`GitHub Actions: ${what} in ${repository}`];
    if (env.GITHUB_WORKFLOW) parts.push(`workflow "${env.GITHUB_WORKFLOW}"`);
    if (env.GITHUB_JOB) parts.push(`job ${env.GITHUB_JOB}`);
    if (env.GITHUB_REF_NAME) parts.push(`ref ${env.GITHUB_REF_NAME}`);
    if (env.GITHUB_RUN_ID) {
      parts.push(`run ${env.GITHUB_RUN_ID}`);
      const server = env.GITHUB_SERVER_URL ?? "https://github.com";
      if (env.GITHUB_REPOSITORY)
        parts.push(`${server}/${env.GITHUB_REPOSITORY}/actions/runs/${env.GITHUB_RUN_ID}`);
    }
    return parts.join(", ");
  }
  if (env.GITLAB_CI === "true" || env.CI_PIPELINE_ID) {
    const parts = [`GitLab CI: ${what} in ${env.CI_PROJECT_PATH ?? "unknown project"}`];
    if (env.CI_JOB_NAME) parts.push(`job ${env.CI_JOB_NAME}`);
    if (env.CI_COMMIT_REF_NAME) parts.push(`ref ${env.CI_COMMIT_REF_NAME}`);
    if (env.CI_PIPELINE_ID) parts.push(`pipeline ${env.CI_PIPELINE_ID}`);
    if (env.CI_JOB_URL) parts.push(env.CI_JOB_URL);
    return parts.join(", ");
  }
  return undefined;
}

function localDescription(what: string): string {
  let user = "unknown user";
  try {
    user = userInfo().username;
  } catch {
    // No passwd entry (some containers): the host still says where it runs.
  }
  return `${what} by ${user}@${hostname()}`;
}

/** `jitkey run` names the program it runs (not its arguments, which an approver need not see). */
export function runWhat(command: string[]): string {
  return `jitkey run ${basename(command[0] ?? "")}`;
}

function truncate(goal: string): string {
  return goal.length <= MAX_GOAL_LENGTH ? goal : `${goal.slice(0, MAX_GOAL_LENGTH - 1)}…`;
}
