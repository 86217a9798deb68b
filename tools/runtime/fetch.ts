/**
 * The HTTP clients PostHog handed plugins, each optionally redirected to the Intercom emulator by
 * tools/runtime/load-plugin.ts's `redirectingFetch` (nock intercepts them when no emulator is given):
 * node-fetch 2 (variants 1-2), an undici-like fetch (variants 3-4: a standard Response, its own 10 s
 * timeout, `timeout` ignored) and the CDP `meta.fetch` (variants 5-6: a plain object, `timeoutMs`).
 */
import {
    cdpFetch,
    CdpFetchFn,
    CdpResponse,
    EmulatorTarget,
    FetchFn,
    hostNodeFetch,
    redirectingFetch,
} from './load-plugin'
import { FETCH_TIMEOUT_MS, FetchKind } from './variants'

/**
 * node-fetch 2 underneath every kind (nock 13 intercepts it, and its Response has the standard shape),
 * or the caller's fetch; pointed at the emulator when one is given.
 */
function base(target: EmulatorTarget | undefined, override: FetchFn | undefined): FetchFn {
    const real = override ?? hostNodeFetch
    return target === undefined ? real : redirectingFetch(target, real)
}

/** undici as the 2024-2025 plugin server used it: `timeout` ignored, its own 10 s limit. */
export function undiciLikeFetch(realFetch: FetchFn, timeoutMs = FETCH_TIMEOUT_MS): FetchFn {
    return (input, init = {}) => {
        // `timeout` is node-fetch's option: undici does not know it.
        const rest = { ...init }
        delete rest.timeout
        return realFetch(input, { ...rest, signal: init.signal ?? AbortSignal.timeout(timeoutMs) })
    }
}

/** The CDP response also has `dump()`, which discards the body. */
export type CdpFullResponse = CdpResponse & { dump(): Promise<void> }
export type CdpFullFetch = (input: string, options?: Parameters<CdpFetchFn>[1]) => Promise<CdpFullResponse>

function isTimeout(error: unknown): boolean {
    const name = (error as { name?: string } | null)?.name
    return (
        name === 'AbortError' ||
        name === 'TimeoutError' ||
        (error as { type?: string })?.type === 'request-timeout'
    )
}

function timeoutError(url: string): Error {
    const error = new Error(`Request to ${new URL(url).host} timed out`)
    error.name = 'TimeoutError'
    return error
}

/** CDP's fetch: connection errors retried once, a timeout throws TimeoutError, a `dump()` on the answer. */
export function cdpFullFetch(realFetch: FetchFn): CdpFullFetch {
    const plain = cdpFetch(realFetch)
    const once = async (input: string, options?: Parameters<CdpFetchFn>[1]): Promise<CdpFullResponse> => {
        const response = await plain(input, options)
        return { ...response, dump: async () => undefined }
    }
    return async (input, options) => {
        try {
            return await once(input, options)
        } catch (error) {
            if (isTimeout(error)) throw timeoutError(input)
            try {
                return await once(input, options)
            } catch (again) {
                throw isTimeout(again) ? timeoutError(input) : again
            }
        }
    }
}

export interface VariantFetches {
    /** What `import fetch from 'node-fetch'` gives (sandboxed variants) or undefined (CDP). */
    imported?: FetchFn
    /** The CDP `meta.fetch`, before the executor's test-function wrapper. */
    cdp?: CdpFullFetch
}

export function fetchesFor(kind: FetchKind, target?: EmulatorTarget, override?: FetchFn): VariantFetches {
    const real = base(target, override)
    if (kind === 'node-fetch-2') return { imported: real }
    if (kind === 'undici') return { imported: undiciLikeFetch(real) }
    return { cdp: cdpFullFetch(real) }
}
