/** A model of PostHog's CDP legacy plugin executor (variants 5 and 6).
 *
 * Read from `nodejs/src/cdp/services/legacy-plugin-executor.service.ts`. The plugin is an ordinary module of PostHog's Node app (timers and
 * `process` exist). Per destination setupPlugin runs once with `{config: inputs, global: {}, logger,
 * geoip, fetch}` and its promise (a rejection too) is kept. Each run calls `onEvent(event, {...meta,
 * logger, fetch, person})`, the event rebuilt from the invocation's globals (`ip: null`, `$set` and
 * `$set_once` from the properties). A "test function" run (PostHog's in-app test) answers every non-GET
 * request after 200 ms with `{status: 'OK', message: 'Test function'}`. The newest version re-queues a
 * run that threw RetryError (see variants.ts). Delays are scaled by `delayScale` so tests stay fast.
 */
import { RetryError } from '@posthog/plugin-scaffold'
import * as vm from 'node:vm'

import type { CdpFullFetch } from './fetch'
import { hostModules, levelledLog } from './load-plugin'
import { createSleeper } from './sleeper'
import { posthogBabel } from './transforms'
import { RetryPolicy, retryDelayMs } from './variants'

/** The id under which PostHog already runs a port of the original Intercom app. */
export const INTERCOM_TEMPLATE_ID = 'plugin-posthog-intercom-plugin'

export const TEST_FUNCTION_ANSWER = { status: 'OK', message: 'Test function' } as const
const TEST_FUNCTION_DELAY_MS = 200

/** The `storage` one 2025 version passed instead of `person`: nothing is ever stored. */
const NO_STORAGE = { get: async (_key: string, fallback: unknown) => fallback, set: async () => undefined }

type CdpLogLevel = 'debug' | 'info' | 'warn' | 'error'
type CdpLog = { level: CdpLogLevel; message: string }

/** The invocation's globals, as far as the executor reads them. */
export interface CdpGlobals {
    event: {
        uuid: string
        event: string
        distinct_id: string
        timestamp: string
        properties: Record<string, unknown>
    }
    person?: { id: string; properties: Record<string, unknown>; name?: string; url?: string } | null
}

interface CdpRunResult {
    /** Run number, 1-based. */
    run: number
    error?: unknown
    /** What onEvent resolved to (PostHog ignores it; the tools count it). */
    value?: unknown
    logs: CdpLog[]
}

interface CdpExecutorOptions {
    /** index.ts itself, or a port package as PostHog's repository holds it (see loadPort). */
    source: string | PortPackage
    inputs: Record<string, unknown>
    fetch: CdpFullFetch
    retry: RetryPolicy
    /** Pass `person` in meta (one 2025 version passed `storage` instead). */
    person: boolean
    testFunction?: boolean
    teamId?: number
    templateId?: string
    /** Factor on the re-run delays and the test function's 200 ms. Default 1. */
    delayScale?: number
    random?: () => number
    sleep?: (ms: number) => Promise<void>
    onLog?: (log: CdpLog) => void
}

type Hook = (...args: unknown[]) => Promise<unknown>
type PluginModule = { setupPlugin?: Hook; onEvent?: Hook; teardownPlugin?: Hook }

const HOST_MODULES: Record<string, unknown> = hostModules(() => {
    throw new Error('A ported plugin must use meta.fetch: node-fetch is not wired to the network here')
})

/** Compiles index.ts as a module of the host app (TypeScript stripped, CommonJS), in the host realm. */
function loadModule(source: string, modules: Record<string, unknown> = HOST_MODULES): PluginModule {
    const wrapper = `(function (exports, require, module) {\n${posthogBabel(source)}\n})`
    const module = { exports: {} as PluginModule }
    const require = (name: string) => {
        if (!(name in modules)) throw new Error(`Cannot find module '${name}'`)
        return modules[name]
    }
    new vm.Script(wrapper, { filename: 'index.ts' }).runInThisContext()(module.exports, require, module)
    return module.exports
}

/** PostHog's own RetryError (`~/plugin-scaffold` in its repository): a class apart from the npm scaffold's. */
export class PostHogRetryError extends Error {
    constructor(message?: string) {
        super(message)
        this.name = 'RetryError'
    }
}

/** `_destinations/<name>/{index.ts,template.ts}`: what `npm run port` writes. */
interface PortPackage {
    index: string
    template: string
    /** The export of template.ts holding the plugin. */
    exportName: string
}

/**
 * Loads a port package the way PostHog compiles it into its app: template.ts's `./index` is index.ts,
 * `~/plugin-scaffold` is PostHog's own scaffold, and only a RetryError of that class is re-queued.
 */
function loadPort(port: PortPackage): PluginModule {
    const index = loadModule(port.index)
    const modules = { './index': index, '~/plugin-scaffold': { RetryError: PostHogRetryError } }
    const template = loadModule(port.template, modules) as Record<string, unknown>
    return template[port.exportName] as PluginModule
}

/** The message of any thrown value, whichever realm made it (jest runs tests in a realm of its own). */
function describe(error: unknown): string {
    const message = (error as { message?: unknown } | null)?.message
    return typeof message === 'string' ? message : String(error)
}

/** PostHog's LegacyPluginLogger: no `info`; `log` is written at level info. */
export function legacyLogger(write: (level: CdpLogLevel, args: unknown[]) => void) {
    return levelledLog({ debug: 'debug', log: 'info', warn: 'warn', error: 'error' } as const, write)
}

export interface CdpExecutor {
    /** One run, as `execute()` does it. */
    execute(globals: CdpGlobals, run?: number): Promise<CdpRunResult>
    /** Runs again while the policy re-queues a RetryError. */
    invoke(globals: CdpGlobals): Promise<{ runs: CdpRunResult[]; error?: unknown; value?: unknown }>
    /** Ends pending re-run delays. */
    close(): void
}

export function createCdpExecutor(options: CdpExecutorOptions): CdpExecutor {
    const port = typeof options.source === 'string' ? null : options.source
    const plugin = port ? loadPort(port) : loadModule(options.source as string)
    // PostHog re-queues only its own RetryError class; for index.ts alone the name stands in (realms differ).
    const retries = (error: unknown) =>
        port
            ? error instanceof PostHogRetryError
            : error instanceof RetryError || (error as { name?: unknown } | null)?.name === 'RetryError'
    const { retry, fetch, templateId = INTERCOM_TEMPLATE_ID } = options
    const scale = options.delayScale ?? 1
    const sleeper = createSleeper()
    const sleep = options.sleep ?? sleeper.sleep
    let setup: Promise<unknown> | null = null
    const setupLogs: CdpLog[] = []

    const loggerInto = (logs: CdpLog[]) =>
        legacyLogger((level, args) => {
            const message = args.map((arg) => (typeof arg === 'string' ? arg : JSON.stringify(arg))).join(' ')
            logs.push({ level, message })
            options.onLog?.({ level, message })
        })
    const geoip = { locate: () => null }
    const baseMeta = { config: options.inputs, global: {}, logger: loggerInto(setupLogs), geoip, fetch }

    const execute = async (globals: CdpGlobals, run = 1): Promise<CdpRunResult> => {
        const logs: CdpLog[] = []
        const logger = loggerInto(logs)
        try {
            // Setup receives the real fetch, never the test-function stand-in; its result is kept for good.
            setup ??= Promise.resolve().then(() => plugin.setupPlugin?.({ ...baseMeta }))
            await setup.catch((error: unknown) => {
                throw Object.assign(new Error(`Plugin ${templateId} setup failed: ${describe(error)}`), {
                    cause: error,
                })
            })
            const request: CdpFullFetch = async (input, init) => {
                const method = typeof init?.method === 'string' ? init.method : 'GET'
                if (options.testFunction && method.toUpperCase() !== 'GET') {
                    logger.log('Fetch called but mocked due to test function')
                    await sleep(TEST_FUNCTION_DELAY_MS * scale)
                    return {
                        status: 200,
                        headers: {},
                        json: async () => ({ ...TEST_FUNCTION_ANSWER }),
                        text: async () => JSON.stringify(TEST_FUNCTION_ANSWER),
                        dump: async () => undefined,
                    }
                }
                return fetch(input, init)
            }
            const { event } = globals
            const properties = event.properties ?? {}
            const processed = {
                distinct_id: event.distinct_id,
                ip: null,
                team_id: options.teamId ?? 1,
                event: event.event,
                properties: { ...properties },
                timestamp: event.timestamp,
                $set: properties.$set,
                $set_once: properties.$set_once,
                uuid: event.uuid,
            }
            const extra = options.person ? { person: globals.person ?? null } : { storage: NO_STORAGE }
            const value = await plugin.onEvent?.(processed, { ...baseMeta, logger, fetch: request, ...extra })
            return { run, value, logs }
        } catch (error) {
            logger.error(`Plugin execution failed: ${describe(error)}`)
            return { run, error, logs }
        }
    }

    return {
        execute,
        async invoke(globals) {
            const runs: CdpRunResult[] = []
            for (let run = 1; ; run++) {
                const result = await execute(globals, run)
                runs.push(result)
                if (result.error === undefined) return { runs, value: result.value }
                const again = retry.kind === 'cdp-requeue' && run < retry.runs && retries(result.error)
                if (!again) return { runs, error: result.error }
                await sleep(retryDelayMs(retry, run, options.random) * scale)
            }
        },
        close: sleeper.cancelAll,
    }
}
