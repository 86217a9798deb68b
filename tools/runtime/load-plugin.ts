/** Loads a plugin the way PostHog's plugin server does, so tests and tools meet production's walls:
 * Babel with preset-typescript and preset-env for this Node, filename `index.ts`, no config files;
 * imports other than `@posthog/plugin-scaffold`, `node-fetch`, `crypto` and `url` refused at load time
 * with PostHog's message; a fresh `node:vm` context whose only host globals are `console`, `URL`,
 * `Buffer` and `RetryError` (vm2 froze the same set); `node-fetch` is the caller's fetch, so no test
 * reaches the network by accident (`redirectingFetch` sends Intercom's hosts to an emulator, refuses others).
 *
 * Known difference: PostHog rewrites imports into lookups on a host object; this loader keeps Babel's
 * CommonJS output and gates `require`. Both resolve named imports and node-fetch's default import alike;
 * `legacyImportHazards` reports the forms the 2021-2023 plugin server resolved to `undefined`.
 */
import * as babel from '@babel/core'
import * as scaffold from '@posthog/plugin-scaffold'
import { RetryError } from '@posthog/plugin-scaffold'
import * as crypto from 'node:crypto'
import { readFileSync } from 'node:fs'
import * as path from 'node:path'
import * as url from 'node:url'
import * as vm from 'node:vm'
import nodeFetch from 'node-fetch'

import { INTERCOM_REGION_NAMES, REGION_HOSTS } from '../../index'
import { importRefusal, posthogBabel } from './transforms'
import { FETCH_TIMEOUT_MS } from './variants'

/** The only modules a PostHog plugin may import. */
export const ALLOWED_IMPORTS = ['@posthog/plugin-scaffold', 'node-fetch', 'crypto', 'url'] as const
type AllowedImport = (typeof ALLOWED_IMPORTS)[number]

/** Intercom's documented API hosts (US, EU, AU). */
export const INTERCOM_HOSTS = ['api.intercom.io', 'api.eu.intercom.io', 'api.au.intercom.io'] as const
export type IntercomHost = (typeof INTERCOM_HOSTS)[number]

/** How Intercom's GET /me names the region of a host (`US`, `Europe`, `AU`), from index.ts's own tables. */
export function regionNameOf(host: string): string | undefined {
    const region = Object.entries(REGION_HOSTS).find(([, base]) => new URL(base).hostname === host)?.[0]
    return Object.entries(INTERCOM_REGION_NAMES).find(([, code]) => code === region)?.[0]
}

/** The plugin under test: the repository's index.ts. */
export const DEFAULT_PLUGIN_FILE = path.resolve(__dirname, '..', '..', 'index.ts')

type HeadersInit = Record<string, string> | Array<[string, string]> | HeadersLike

/** Request options a plugin may pass to node-fetch (or to the later undici-based fetch). */
export interface FetchInit {
    method?: string
    headers?: HeadersInit
    body?: string
    /** node-fetch 2 only; the undici-based fetch ignores it. */
    timeout?: number
    /** PostHog's cdp fetch only; node-fetch ignores it. */
    timeoutMs?: number
    redirect?: 'follow' | 'manual' | 'error'
    signal?: AbortSignal
}

export interface HeadersLike {
    get(name: string): string | null
    forEach(callback: (value: string, name: string) => void): void
}

/** What node-fetch 2 and the standard fetch both return, as far as a plugin may rely on it. */
export interface FetchResponse {
    status: number
    ok: boolean
    headers: HeadersLike
    json(): Promise<unknown>
    text(): Promise<string>
}

export type FetchFn = (input: string | URL, init?: FetchInit) => Promise<FetchResponse>

/** node-fetch 2 as a FetchFn (its typings accept fewer header forms than FetchInit; it only gets records). */
export const hostNodeFetch = nodeFetch as unknown as FetchFn

/** Options of PostHog's cdp `meta.fetch`. */
export type CdpFetchOptions = Pick<FetchInit, 'method' | 'body' | 'timeoutMs'> & {
    headers?: Record<string, string>
}

/** The plain response of PostHog's cdp `meta.fetch`: no `ok`, no `headers.get`. */
export interface CdpResponse extends Pick<FetchResponse, 'status' | 'json' | 'text'> {
    headers: Record<string, string>
}

type CdpFetchFn = (input: string, options?: CdpFetchOptions) => Promise<CdpResponse>

export type PluginMeta = Record<string, unknown>
export type PluginEventArg = Record<string, unknown>

/** The hooks a plugin exports; PostHog appends `meta` as the last argument of each. */
export interface PluginExports {
    setupPlugin?: (meta: PluginMeta) => unknown
    teardownPlugin?: (meta: PluginMeta) => unknown
    onEvent?: (event: PluginEventArg, meta: PluginMeta) => unknown
    runEveryMinute?: (meta: PluginMeta) => unknown
    [name: string]: unknown
}

/** Logging methods named by `levels`, each handing its level and arguments to `write`. */
export function levelledLog<M extends string, L extends string>(
    levels: Record<M, L>,
    write: (level: L, args: unknown[]) => void
): Record<M, (...args: unknown[]) => void> {
    const methods = Object.entries<L>(levels).map(([method, level]) => [
        method,
        (...args: unknown[]) => write(level, args),
    ])
    return Object.fromEntries(methods) as Record<M, (...args: unknown[]) => void>
}

type ConsoleLevel = 'log' | 'info' | 'warn' | 'error' | 'debug'

/** The console the sandbox sees; PostHog routed it to the plugin's log. */
export type ConsoleLike = Record<ConsoleLevel, (...args: unknown[]) => void>

/** A sandbox console whose every call goes to `write`, with its level and arguments. */
export function consoleTo(write: (level: ConsoleLevel, args: unknown[]) => void): ConsoleLike {
    return levelledLog({ log: 'log', info: 'info', warn: 'warn', error: 'error', debug: 'debug' }, write)
}

interface LoadPluginOptions {
    /** The plugin's file (default: the repository's index.ts), or its `source` text instead. */
    file?: string
    source?: string
    /** What `import fetch from 'node-fetch'` resolves to; by default every request is refused. */
    fetch?: FetchFn
    /** The sandbox's `console`; defaults to the host console. */
    console?: ConsoleLike
}

/** One import the plugin makes, as written in its source. */
type ImportUse = { source: string; forms: Array<'default' | 'namespace' | 'named' | 'require' | 'dynamic'> }

/** The import form each kind of specifier writes. */
const FORM = {
    ImportDefaultSpecifier: 'default',
    ImportNamespaceSpecifier: 'namespace',
    ImportSpecifier: 'named',
} as const

function isAllowedImport(name: string): name is AllowedImport {
    return (ALLOWED_IMPORTS as readonly string[]).includes(name)
}

/**
 * A Babel plugin that records every import and refuses those PostHog does not provide, at transpile
 * time as PostHog's import rewriting did. Hand-written `require()` and `import()` are gated too; the
 * `require` calls Babel generates name only modules whose import declarations passed this gate.
 */
function importGate(recorded: ImportUse[]): babel.PluginObj {
    const record = (source: string, forms: ImportUse['forms']): void => {
        if (!isAllowedImport(source)) throw importRefusal(source)
        recorded.push({ source, forms })
    }
    return {
        name: 'posthog-import-gate',
        visitor: {
            ImportDeclaration({ node }) {
                record(
                    node.source.value,
                    node.specifiers.map((specifier) => FORM[specifier.type])
                )
            },
            ExportAllDeclaration({ node }) {
                record(node.source.value, ['namespace'])
            },
            ExportNamedDeclaration({ node }) {
                if (node.source) record(node.source.value, ['named'])
            },
            CallExpression({ node }) {
                // Calls Babel generated have no source location: they come from gated imports.
                const isRequire = node.callee.type === 'Identifier' && node.callee.name === 'require'
                if (!node.loc || (!isRequire && node.callee.type !== 'Import')) return
                const [first] = node.arguments
                if (node.arguments.length !== 1 || first.type !== 'StringLiteral')
                    throw new Error('Cannot import a module whose name is computed at run time')
                record(first.value, [isRequire ? 'require' : 'dynamic'])
            },
        },
    }
}

const transpileCache = new Map<string, { code: string; imports: ImportUse[] }>()

/** Transpiles plugin source exactly as PostHog's plugin server configures Babel (once per source). */
export function transpilePlugin(source: string): { code: string; imports: ImportUse[] } {
    const imports: ImportUse[] = []
    if (!transpileCache.has(source))
        transpileCache.set(source, { code: posthogBabel(source, [() => importGate(imports)]), imports })
    return transpileCache.get(source)!
}

/**
 * Import forms that PostHog's plugin server of 2021-2023 resolved to `undefined`: it turned a default
 * or namespace import into `module.default`, which `crypto` and the scaffold lack. Named imports
 * (`import { createHash } from 'crypto'`) work in every runtime.
 */
export function legacyImportHazards(imports: readonly ImportUse[]): string[] {
    const withoutDefault = ['crypto', '@posthog/plugin-scaffold']
    return imports.flatMap(({ source, forms }) =>
        forms
            .filter((form) => withoutDefault.includes(source) && (form === 'default' || form === 'namespace'))
            .map((form) => `${form} import of '${source}' is undefined in the 2021-2023 plugin server`)
    )
}

/** node-fetch's module shape: the function, with itself as `.default`. */
export function nodeFetchModule(fetch: FetchFn): FetchFn & { default: FetchFn } {
    const module: FetchFn = (input, init) => fetch(input, init)
    return Object.assign(module, { default: module })
}

/** The modules a plugin may import, as Node gives them; `node-fetch` is the given fetch. */
export function hostModules(fetch: FetchFn): Record<AllowedImport, unknown> {
    return { '@posthog/plugin-scaffold': scaffold, 'node-fetch': nodeFetchModule(fetch), crypto, url }
}

/**
 * Where PostHog looks for hooks, as code for the sandbox: `exports`, `exports.default` and
 * `module.exports`, in that order, and the global object only when none of them holds anything.
 */
export const EXPORT_PLACES = `((places) => (places.some((d) => Object.keys(d).length > 0) ? places : [...places, globalThis]))(
    [exports, exports.default, module.exports].filter((d) => typeof d === 'object' && d !== null))`

/**
 * Transpiles and evaluates a plugin in a context with the host globals vm2 gave plugins and nothing else
 * (V8's builtins such as Date, JSON, Promise and Intl exist in every context; Node's additions such as
 * timers, process and fetch do not). Returns its exported hooks.
 */
export function loadPlugin(options: LoadPluginOptions = {}): PluginExports {
    const source = options.source ?? readFileSync(options.file ?? DEFAULT_PLUGIN_FILE, 'utf8')
    const { code } = transpilePlugin(source)
    const refuse = () =>
        Promise.reject(
            new Error('Network access is disabled in the plugin sandbox: pass `fetch` to loadPlugin')
        )
    const modules = hostModules(options.fetch ?? refuse)
    const require = (name: string) => {
        if (!isAllowedImport(name)) throw importRefusal(name)
        return modules[name]
    }
    const globals = { console: options.console ?? console, URL, Buffer, RetryError, require }
    const context = vm.createContext(globals, {
        name: 'posthog-plugin',
        codeGeneration: { strings: true, wasm: false },
    })
    // vm2 exposed the sandbox's global object as `global`, as Node does.
    context.global = vm.runInContext('globalThis', context)
    // Same preamble as PostHog's VM: the plugin's CommonJS output writes into these two.
    const preamble = 'const module = { exports: {} };\nlet exports = {};\n'
    vm.runInContext(preamble + code, context, { filename: 'index.ts' })
    // The first place holding a hook wins.
    const places = (vm.runInContext(EXPORT_PLACES, context) as PluginExports[]).reverse()
    return Object.fromEntries(places.flatMap((place) => Object.entries(place).filter(([, value]) => value)))
}

/** Where the three Intercom hosts go: one emulator for all, or one URL per host. */
export type EmulatorTarget = string | Partial<Record<IntercomHost, string>>

/** One request that the redirecting fetch let through. */
interface RedirectedCall {
    /** The Intercom host the plugin asked for: this is how tests assert the region. */
    host: IntercomHost
    method: string
    /** Path and query as the plugin wrote them. */
    path: string
    forwardedTo: string
}

export type RedirectingFetch = FetchFn & { readonly calls: RedirectedCall[] }

export function isIntercomHost(host: string): host is IntercomHost {
    return (INTERCOM_HOSTS as readonly string[]).includes(host)
}

/** Copies any accepted header form into a plain object (names kept as given). */
export function toHeaderRecord(headers: HeadersInit | undefined): Record<string, string> {
    if (!headers || Array.isArray(headers)) return Object.fromEntries(headers ?? [])
    if (typeof headers.forEach !== 'function' || typeof headers.get !== 'function')
        return { ...(headers as Record<string, string>) }
    const record: Record<string, string> = {}
    ;(headers as HeadersLike).forEach((value, name) => {
        record[name] = value
    })
    return record
}

/**
 * Sends requests for the Intercom hosts to the emulator instead (path and query kept, plus an
 * `X-Forwarded-Host` header naming the host asked for) and refuses everything else, so a plugin
 * under test can neither reach the internet nor silently talk to the wrong region.
 */
export function redirectingFetch(emulator: EmulatorTarget, realFetch: FetchFn): RedirectingFetch {
    const calls: RedirectedCall[] = []
    const redirect = async (input: string | URL, init: FetchInit = {}): Promise<FetchResponse> => {
        const requested = new URL(String(input))
        const host = requested.hostname
        if (!isIntercomHost(host))
            throw new Error(`Refused request to ${host}: only Intercom's API hosts are reachable`)
        if (requested.protocol !== 'https:')
            throw new Error(`Refused ${requested.protocol} request to ${host}: Intercom needs https`)
        const base = typeof emulator === 'string' ? emulator : emulator[host]
        if (!base) throw new Error(`Refused request to ${host}: no emulator serves this region`)
        const pathAndQuery = requested.pathname + requested.search
        const forwardedTo = base.replace(/\/+$/, '') + pathAndQuery
        calls.push({ host, method: (init.method ?? 'GET').toUpperCase(), path: pathAndQuery, forwardedTo })
        const headers = { ...toHeaderRecord(init.headers), 'X-Forwarded-Host': host }
        return realFetch(forwardedTo, { ...init, headers })
    }
    return Object.assign(redirect, { calls })
}

/**
 * Adapts a node-fetch style fetch to PostHog's cdp `meta.fetch`: a plain response with lower-case
 * header names, redirects not followed, `timeoutMs` honoured (through node-fetch's `timeout` and an
 * abort signal, so either kind of fetch stops in time), and a body readable once, as undici's is.
 */
export function cdpFetch(realFetch: FetchFn): CdpFetchFn {
    return async (input, options = {}) => {
        const timeoutMs = options.timeoutMs ?? FETCH_TIMEOUT_MS
        const response = await realFetch(input, {
            method: options.method ?? 'GET',
            headers: options.headers,
            body: options.body,
            redirect: 'manual',
            timeout: timeoutMs,
            signal: AbortSignal.timeout(timeoutMs),
        })
        const headers: Record<string, string> = {}
        response.headers.forEach((value, name) => {
            headers[name.toLowerCase()] = value
        })
        let consumed = false
        const text = async (): Promise<string> => {
            if (consumed) throw new TypeError('Body is unusable: Body has already been read')
            consumed = true
            return response.text()
        }
        return {
            status: response.status,
            headers,
            text,
            json: async () => JSON.parse(await text()) as unknown,
        }
    }
}
