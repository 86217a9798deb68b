/** One entry point to PostHog's six runtimes: `startVariant(id, options)` loads a plugin as that runtime did.
 * It runs setupPlugin and answers for each event how THE RUNTIME treated it: ok, an error recorded, or
 * retried n times then ok or failed. `runEveryMinute` exists only where the variant calls it; the cache is
 * PostHog's extension over a real Redis where the variant has one.
 */
import { readFileSync } from 'node:fs'
import { format } from 'node:util'

import { createMemoryStorage, describeError } from './harness'
import { consoleTo, DEFAULT_PLUGIN_FILE, EmulatorTarget, FetchFn } from './load-plugin'
import { createRedisCache, PluginCache, RedisCache, RedisMode } from './cache'
import { CdpExecutor, createCdpExecutor } from './cdp-executor'
import { fetchesFor } from './fetch'
import { isRetryErrorFromVm, loadSandboxed, SandboxedPlugin } from './sandbox'
import { createSleeper } from './sleeper'
import { maxRuns, retryDelayMs, VARIANTS, VariantId, VariantSpec } from './variants'

/** An event as PostHog's ingestion hands it on (the person only reaches the CDP variants). */
export interface RuntimeEvent {
    uuid: string
    event: string
    distinct_id: string
    timestamp: string
    properties: Record<string, unknown>
    team_id?: number
    person?: { id?: string; properties: Record<string, unknown> } | null
}

/** How the runtime treated one call. */
export interface Treatment {
    status: 'ok' | 'failed'
    /** Calls of the hook: 1, or more where the runtime retried a RetryError. */
    runs: number
    retried: number
    /** What the hook resolved to, when it did. */
    value?: unknown
    /** `Name: message` of the final error. */
    error?: string
}

export type RuntimeLog = { level: string; message: string }

export interface StartOptions {
    /** Plugin config, every value a string as PostHog stores it. */
    config: Record<string, string>
    /** Plugin source; defaults to the repository's index.ts. */
    source?: string
    /** Where the three Intercom hosts go; without it requests go out as written (for nock). */
    emulatorUrl?: EmulatorTarget
    /** The HTTP client underneath (default node-fetch 2). */
    fetch?: FetchFn
    /** Redis for `meta.cache` (variants 1-4); without it those variants get no cache. */
    redisUrl?: string
    redisMode?: RedisMode
    pluginId?: number
    teamId?: number
    /** Factor on the runtime's retry delays (and CDP's test-function delay). Default 1. */
    delayScale?: number
    /** PostHog's TASK_TIMEOUT in seconds, variants 1-4. Default 30. */
    taskTimeoutSeconds?: number
    /** CDP: run as PostHog's in-app "test function". */
    testFunction?: boolean
    random?: () => number
    onLog?: (log: RuntimeLog) => void
}

export interface VariantRuntime {
    readonly variant: VariantSpec
    /** Why setupPlugin failed; the plugin then handles no event (PostHog did not load it). */
    readonly setupError: string | null
    onEvent(event: RuntimeEvent): Promise<Treatment>
    /** Only where the variant calls it (1-3) and the plugin exports it. */
    runEveryMinute?: () => Promise<Treatment>
    /** `meta.cache`, or null where the variant has none. */
    readonly cache: PluginCache | null
    readonly redis: RedisCache | null
    readonly logs: RuntimeLog[]
    teardown(): Promise<void>
}

const ok = (runs: number, value: unknown): Treatment => ({ status: 'ok', runs, retried: runs - 1, value })

function failed(runs: number, error: unknown): Treatment {
    return { status: 'failed', runs, retried: Math.max(runs - 1, 0), error: describeError(error) }
}

/** The event as the plugin server's onEvent received it. */
function processedEvent(event: RuntimeEvent): Record<string, unknown> {
    const properties = event.properties ?? {}
    return {
        uuid: event.uuid,
        event: event.event,
        distinct_id: event.distinct_id,
        timestamp: event.timestamp,
        team_id: event.team_id ?? 1,
        ip: null,
        properties,
        $set: properties.$set,
        $set_once: properties.$set_once,
    }
}

/** How each kind of runtime starts: all of VariantRuntime but the parts startVariant adds. */
type Starter = (
    variant: VariantSpec,
    options: StartOptions,
    source: string,
    log: (log: RuntimeLog) => void
) => Promise<Omit<VariantRuntime, 'variant' | 'logs'>>

const startSandboxed: Starter = async (variant, options, source, log) => {
    const { redisUrl, pluginId, teamId, redisMode: mode } = options
    const redis = variant.cache && redisUrl ? createRedisCache({ redisUrl, pluginId, teamId, mode }) : null
    const { imported } = fetchesFor(variant.fetch, options.emulatorUrl, options.fetch)
    const plugin: SandboxedPlugin = loadSandboxed({
        source,
        variant,
        fetch: imported!,
        console: consoleTo((level, args) => log({ level, message: format(...args) })),
        meta: {
            cache: redis?.cache,
            config: options.config,
            attachments: {},
            storage: createMemoryStorage(),
            geoip: { locate: async () => null },
            jobs: {},
            metrics: {},
            utils: {},
        },
        taskTimeoutSeconds: options.taskTimeoutSeconds,
    })
    const sleeper = createSleeper()
    let setupError: string | null = null
    try {
        await plugin.methods.setupPlugin?.()
    } catch (error) {
        setupError = describeError(error)
    }

    /** onEvent, called again after a RetryError while the variant's policy allows. */
    const onEvent = async (event: RuntimeEvent): Promise<Treatment> => {
        const hook = plugin.methods.onEvent
        if (setupError) return failed(0, new Error(`setupPlugin failed, plugin not loaded: ${setupError}`))
        if (!hook) return ok(0, undefined)
        const processed = processedEvent(event)
        for (let run = 1; ; run++) {
            try {
                return ok(run, await hook(processed))
            } catch (error) {
                if (!isRetryErrorFromVm(error, variant) || run >= maxRuns(variant.retry))
                    return failed(run, error)
                await sleeper.sleep(retryDelayMs(variant.retry, run) * (options.delayScale ?? 1))
            }
        }
    }
    const minute = plugin.tasks.runEveryMinute
    const runEveryMinute =
        variant.runEveryMinute && minute && !setupError
            ? async (): Promise<Treatment> => {
                  try {
                      return ok(1, await minute())
                  } catch (error) {
                      return failed(1, error)
                  }
              }
            : undefined
    return {
        setupError,
        onEvent,
        runEveryMinute,
        cache: redis?.cache ?? null,
        redis,
        async teardown() {
            sleeper.cancelAll()
            try {
                await plugin.methods.teardownPlugin?.()
            } catch {
                // PostHog logged and moved on.
            }
            plugin.dispose()
            await redis?.close()
        },
    }
}

const startCdp: Starter = async (variant, options, source, log) => {
    const { cdp } = fetchesFor(variant.fetch, options.emulatorUrl, options.fetch)
    const executor: CdpExecutor = createCdpExecutor({
        source,
        inputs: options.config,
        fetch: cdp!,
        retry: variant.retry,
        person: variant.person,
        testFunction: options.testFunction,
        teamId: options.teamId,
        delayScale: options.delayScale,
        random: options.random,
        onLog: log,
    })
    return {
        // CDP runs setup lazily with the first invocation; a failure shows as each event's error.
        setupError: null,
        async onEvent(event) {
            const { person } = event
            const { runs, error, value } = await executor.invoke({
                event,
                person: person
                    ? { id: person.id ?? event.distinct_id, properties: person.properties, name: '', url: '' }
                    : null,
            })
            return error === undefined ? ok(runs.length, value) : failed(runs.length, error)
        },
        cache: null,
        redis: null,
        async teardown() {
            executor.close()
        },
    }
}

/** Loads the plugin in the given runtime and runs its setup. */
export async function startVariant(id: VariantId, options: StartOptions): Promise<VariantRuntime> {
    const variant = VARIANTS[id]
    const logs: RuntimeLog[] = []
    const log = (line: RuntimeLog): void => {
        logs.push(line)
        options.onLog?.(line)
    }
    const source = options.source ?? readFileSync(DEFAULT_PLUGIN_FILE, 'utf8')
    const start = variant.sandbox === 'vm2' ? startSandboxed : startCdp
    return { variant, logs, ...(await start(variant, options, source, log)) }
}
