/** PostHog's six plugin runtimes as data, which the rest of tools/runtime reads.
 *
 * Read from PostHog's sources (../shared/REFERENCE.md and the report of issue 9 say where each fact comes
 * from), so that no other file branches on variant numbers.
 */
import type { GuardStyle, ImportStyle } from './transforms'

export type VariantId = 1 | 2 | 3 | 4 | 5 | 6

/** What the runtime does when onEvent throws a RetryError. */
export type RetryPolicy =
    | { kind: 'none' }
    /** plugin-server 2022-23: up to `runs` tries in all, `baseMs` · 2ⁿ apart (5, 10, 20, 40 s). */
    | { kind: 'exponential'; runs: number; baseMs: number }
    /**
     * CDP newest: the invocation goes back on the queue; `runs` runs in all, the n-th re-run after
     * min(baseMs·n + random·baseMs, maxMs) (CDP_FETCH_RETRIES 3, _BACKOFF_BASE_MS 1000, _MAX_MS 30000).
     */
    | { kind: 'cdp-requeue'; runs: number; baseMs: number; maxMs: number }

/**
 * The fetch a plugin gets: node-fetch 2 (honours `timeout`), undici's standard fetch with its own
 * 10 s timeout (ignores `timeout`), or the CDP plain-object fetch passed as `meta.fetch`.
 */
export type FetchKind = 'node-fetch-2' | 'undici' | 'cdp'

/** The global `fetch` frozen into the VM: node-fetch itself, or 2025's curried `vmFetch` (calling it returns a function). */
export type GlobalFetch = 'node-fetch' | 'curried-vm-fetch' | 'none'

export interface VariantSpec {
    id: VariantId
    /** Which PostHog code base, and when. */
    name: string
    /** vm2 `VM` with PostHog's Babel transforms, or a plain module compiled into PostHog (CDP). */
    sandbox: 'vm2' | 'module'
    /** promise-timeout's guard (vm2 only). */
    guard: GuardStyle | null
    /** replace-imports' reading of default and namespace imports (vm2 only). */
    imports: ImportStyle | null
    retry: RetryPolicy
    runEveryMinute: boolean
    /** Keys of the meta object the hooks receive. */
    metaKeys: readonly string[]
    fetch: FetchKind
    globalFetch: GlobalFetch
    /** `meta.cache` over Redis. */
    cache: boolean
    /** The guard's TimeoutError: a plain Error in 2021, a RetryError later. */
    timeoutIsRetryError: boolean
    /** CDP: `person` passed in meta (one 2025 version passed `storage` instead). */
    person: boolean
}

const PLUGIN_SERVER_META = ['cache', 'config', 'attachments', 'storage', 'geoip', 'jobs', 'metrics', 'global']

type Shared = Omit<VariantSpec, 'id' | 'name'>

/** PostHog/posthog's plugin server, 2022 on: a string-named guard, imports read as the modules themselves. */
const PLUGIN_SERVER: Shared = {
    sandbox: 'vm2',
    guard: 'string-name',
    imports: 'module-itself',
    retry: { kind: 'none' },
    runEveryMinute: true,
    metaKeys: [...PLUGIN_SERVER_META, 'utils'],
    fetch: 'node-fetch-2',
    globalFetch: 'node-fetch',
    cache: true,
    timeoutIsRetryError: true,
    person: false,
}

/** The CDP legacy plugin executor: a module of PostHog's app (timers exist), no cache, no schedule. */
const CDP: Shared = {
    sandbox: 'module',
    guard: null,
    imports: null,
    retry: { kind: 'none' },
    runEveryMinute: false,
    metaKeys: ['config', 'global', 'logger', 'geoip', 'fetch', 'person'],
    fetch: 'cdp',
    globalFetch: 'none',
    cache: false,
    timeoutIsRetryError: false,
    person: true,
}

export const VARIANTS: Readonly<Record<VariantId, VariantSpec>> = {
    1: {
        ...PLUGIN_SERVER,
        id: 1,
        name: 'plugin-server 2021 (PostHog/plugin-server after PR 465)',
        guard: 'callee-2021',
        imports: 'default-member-2021',
        metaKeys: PLUGIN_SERVER_META,
        timeoutIsRetryError: false,
    },
    2: {
        ...PLUGIN_SERVER,
        id: 2,
        name: 'plugin-server 2022-23 (PostHog/posthog)',
        retry: { kind: 'exponential', runs: 5, baseMs: 5000 },
    },
    3: { ...PLUGIN_SERVER, id: 3, name: 'plugin-server 2024 - Feb 2025', fetch: 'undici' },
    4: {
        ...PLUGIN_SERVER,
        id: 4,
        name: 'plugin-server Mar - Dec 2025 (no scheduled tasks, PR 29352)',
        runEveryMinute: false,
        metaKeys: ['cache', 'config', 'attachments', 'storage', 'utils', 'global'],
        fetch: 'undici',
        globalFetch: 'curried-vm-fetch',
    },
    5: { ...CDP, id: 5, name: 'CDP legacy plugin executor 2025' },
    6: {
        ...CDP,
        id: 6,
        name: 'CDP legacy plugin executor, newest (2026, RetryError re-queued)',
        retry: { kind: 'cdp-requeue', runs: 3, baseMs: 1000, maxMs: 30_000 },
    },
}

export const VARIANT_IDS: readonly VariantId[] = [1, 2, 3, 4, 5, 6]

/** PostHog's TASK_TIMEOUT: every await, loop and hook of a sandboxed plugin. */
export const TASK_TIMEOUT_SECONDS = 30

/** The undici fetch of 2024-2025 and the CDP fetch both stop a request after 10 s. */
export const FETCH_TIMEOUT_MS = 10_000

export function isVariantId(value: unknown): value is VariantId {
    return typeof value === 'number' && (VARIANT_IDS as readonly number[]).includes(value)
}

/** Delay before try `failedTries + 1` (0 when no further try is made). */
export function retryDelayMs(policy: RetryPolicy, failedTries: number, random = Math.random): number {
    if (policy.kind === 'none' || failedTries >= policy.runs) return 0
    if (policy.kind === 'exponential') return policy.baseMs * 2 ** (failedTries - 1)
    return Math.min(policy.baseMs * failedTries + Math.floor(random() * policy.baseMs), policy.maxMs)
}

/** How many runs the runtime gives one event in all. */
export function maxRuns(policy: RetryPolicy): number {
    return policy.kind === 'none' ? 1 : policy.runs
}
