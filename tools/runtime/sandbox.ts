/** PostHog's plugin VM for variants 1-4, on vm2.
 *
 * Plugin-server `src/worker/vm/vm.ts`, 2021-2025, on vm2's `VM`
 * (not NodeVM): the code goes through PostHog's Babel transforms, then runs with only the frozen host
 * globals PostHog gave: `console`, `posthog`, `fetch`, `RetryError`, `URL`, `__pluginHostImports`,
 * `__asyncGuard` (and `google` in 2021); no timers, `process`, `AbortController` or `TextEncoder`.
 * Hooks get `meta` (the variant's host objects plus a `global: {}` made in the VM) as last argument;
 * setupPlugin/teardownPlugin/onEvent run inside the guard, `runEvery*` tasks unguarded, as in PostHog.
 */
import * as scaffold from '@posthog/plugin-scaffold'
import { RetryError } from '@posthog/plugin-scaffold'
import * as crypto from 'node:crypto'
import * as url from 'node:url'
import { VM } from 'vm2'

import { ALLOWED_IMPORTS, ConsoleLike, EXPORT_PLACES, FetchFn, nodeFetchModule } from './load-plugin'
import { withTimeout } from './sleeper'
import { transformPluginCode } from './transforms'
import { GlobalFetch, TASK_TIMEOUT_SECONDS, VariantSpec } from './variants'

/**
 * `__asyncGuard`: races the value against the task timeout, failing with PostHog's TimeoutError (a plain
 * Error in 2021, a RetryError from 2022 on). A timer is cleared once its value settles, which no plugin
 * can observe; `clear` ends those still pending (PostHog left them to fire; here jest must exit).
 */
function createAsyncGuard(seconds: number, isRetryError: boolean) {
    const Base = (isRetryError ? RetryError : Error) as new (message: string) => Error
    class TimeoutError extends Base {
        name = 'TimeoutError'
    }
    const pending = new Set<NodeJS.Timeout>()
    const message = (name: unknown) =>
        `Script execution timed out after promise waited for ${seconds} second${seconds === 1 ? '' : 's'} (name: ${String(name)})`
    return {
        guard: (value: unknown, name?: unknown) =>
            withTimeout(value, seconds * 1000, () => new TimeoutError(message(name)), pending),
        clear: () => {
            for (const timer of pending) clearTimeout(timer)
            pending.clear()
        },
    }
}

const withoutDefault = (module: object) =>
    Object.fromEntries(Object.entries(module).filter(([k]) => k !== 'default'))

/**
 * The host table as PostHog's imports.ts built it (compiled by tsc with esModuleInterop): `import
 * crypto from 'crypto'` gave the bare module (no `.default`), `import * as x` gave a namespace whose
 * `.default` is the module. That is what 2021's `table[x].default` read. `RetryError` is the VM's own
 * (see `SANDBOX_RETRY_ERROR`).
 */
function hostImports(fetch: FetchFn, retryError: unknown): Record<string, unknown> {
    const namespace = (module: object, extra: Record<string, unknown> = {}) => {
        const plain = { ...withoutDefault(module), ...extra }
        return Object.freeze({ ...plain, default: plain })
    }
    return Object.freeze({
        '@posthog/plugin-scaffold': namespace(scaffold, { RetryError: retryError }),
        'node-fetch': nodeFetchModule(fetch),
        crypto: Object.freeze(withoutDefault(crypto)),
        url: namespace(url),
    })
}

/**
 * vm2 3.12 (the npm version here) rebuilds errors crossing its bridge and loses their class; PostHog's
 * vm2 3.9 kept it. A RetryError made in the VM's own realm keeps its `name` across, so the runtime can
 * still tell it (`isRetryErrorFromVm`); its shape is the scaffold's (an Error named 'RetryError').
 */
const SANDBOX_RETRY_ERROR = `(class RetryError extends Error {
    constructor(message) { super(message); this.name = 'RetryError' }
})`

/** A RetryError as the host sees it coming out of the VM: by name, since the class is lost. */
export function isRetryErrorFromVm(error: unknown, variant: VariantSpec): boolean {
    const name = (error as { name?: unknown } | null)?.name
    return (
        error instanceof RetryError ||
        name === 'RetryError' ||
        (name === 'TimeoutError' && variant.timeoutIsRetryError)
    )
}

/** The global `fetch` frozen into the VM; 2025's `vmFetch` took the plugin config and returned the fetch. */
const GLOBAL_FETCH: Record<GlobalFetch, (fetch: FetchFn) => unknown> = {
    'node-fetch': nodeFetchModule,
    'curried-vm-fetch': (fetch) => () => (input: string, init?: object) => fetch(input, init),
    none: () => undefined,
}

export type Hook = (...args: unknown[]) => Promise<unknown>

export interface SandboxedPlugin {
    methods: { setupPlugin?: Hook; teardownPlugin?: Hook; onEvent?: Hook }
    /** `runEveryMinute` and friends, as PostHog gathered them. */
    tasks: Partial<Record<string, Hook>>
    meta: Record<string, unknown>
    /** Clears pending guard timers. */
    dispose(): void
}

interface SandboxOptions {
    source: string
    variant: VariantSpec
    /** What `node-fetch` resolves to. */
    fetch: FetchFn
    console: ConsoleLike
    /** Host objects of meta, by key; only the variant's keys are passed. */
    meta: Record<string, unknown>
    /** PostHog's TASK_TIMEOUT in seconds (the loop, await and hook limit). Default 30. */
    taskTimeoutSeconds?: number
}

/** Runs inside the VM: finds the exports, builds meta with a sandbox `global`, binds and guards the hooks. */
const COLLECT_EXPORTS = `(function (guard) {
    const places = ${EXPORT_PLACES}
    const exported = (key) => { for (const d of places) if (d[key]) return d[key] }
    const meta = Object.assign({}, __pluginHostMeta, { global: {} })
    const bind = (fn) => fn ? (...args) => fn(...args, meta) : undefined
    const guarded = (fn, name) => fn ? (...args) => guard(fn(...args), name) : undefined
    const methods = {}
    for (const name of ['setupPlugin', 'teardownPlugin', 'onEvent']) methods[name] = guarded(bind(exported(name)), name)
    const tasks = {}
    for (const d of places.slice().reverse())
        for (const [name, value] of Object.entries(d))
            if (name.startsWith('runEvery') && typeof value === 'function') tasks[name] = bind(value)
    return { methods, tasks, meta }
})`

export function loadSandboxed(options: SandboxOptions): SandboxedPlugin {
    const { variant } = options
    if (variant.sandbox !== 'vm2' || !variant.guard || !variant.imports)
        throw new Error(`Variant ${variant.id} does not run plugins in vm2`)
    const seconds = options.taskTimeoutSeconds ?? TASK_TIMEOUT_SECONDS
    const code = transformPluginCode(options.source, {
        importNames: ALLOWED_IMPORTS,
        guard: variant.guard,
        imports: variant.imports,
        loopTimeoutSeconds: seconds,
    })
    const clock = createAsyncGuard(seconds, variant.timeoutIsRetryError)
    const vm = new VM({ timeout: seconds * 1000 + 1, sandbox: {}, wasm: false })
    vm.freeze(options.console, 'console')
    vm.freeze({ capture: async () => undefined }, 'posthog')
    const globalFetch = GLOBAL_FETCH[variant.globalFetch](options.fetch)
    if (globalFetch) vm.freeze(globalFetch, 'fetch')
    if (variant.guard === 'callee-2021') vm.freeze({}, 'google')
    const retryError = vm.run(SANDBOX_RETRY_ERROR)
    vm.freeze(hostImports(options.fetch, retryError), '__pluginHostImports')
    vm.freeze(retryError, 'RetryError')
    vm.freeze(URL, 'URL')
    vm.freeze(clock.guard, '__asyncGuard')
    // Only the variant's meta keys; `global` is made inside the VM.
    const hostMeta = variant.metaKeys.filter((key) => key !== 'global' && key in options.meta)
    vm.freeze(Object.fromEntries(hostMeta.map((key) => [key, options.meta[key]])), '__pluginHostMeta')

    vm.run(`const module = { exports: {} };\nlet exports = {};\n${code};`, 'index.ts')
    const collect = vm.run(COLLECT_EXPORTS) as (guard: unknown) => Omit<SandboxedPlugin, 'dispose'>
    return { ...collect(clock.guard), dispose: clock.clear }
}
