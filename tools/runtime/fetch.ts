/** The HTTP clients PostHog handed plugins, optionally redirected to the emulator.
 *
 * `redirectingFetch` redirects them (nock intercepts them when no emulator is given): node-fetch 2
 * (variants 1-2), an undici-like fetch (3-4: a standard Response, its own 10 s timeout, `timeout` ignored) and the CDP
 * `meta.fetch` (5-6: a plain object, `timeoutMs`).
 */
import type { CdpFetchOptions, CdpResponse, EmulatorTarget, FetchFn } from './load-plugin'
import { cdpFetch, hostNodeFetch, redirectingFetch } from './load-plugin'
import { FETCH_TIMEOUT_MS, FetchKind } from './variants'
import { isTimeout } from '../../index'

/** undici as the 2024-2025 plugin server used it: `timeout` ignored, its own 10 s limit. */
function undiciLikeFetch(realFetch: FetchFn, timeoutMs = FETCH_TIMEOUT_MS): FetchFn {
    return (input, { timeout: _nodeFetchOnly, ...init } = {}) =>
        realFetch(input, { ...init, signal: init.signal ?? AbortSignal.timeout(timeoutMs) })
}

/** The CDP response also has `dump()`, which discards the body. */
type CdpFullResponse = CdpResponse & { dump(): Promise<void> }
export type CdpFullFetch = (input: string, options?: CdpFetchOptions) => Promise<CdpFullResponse>

/** CDP's fetch: connection errors retried once, a timeout throws TimeoutError, a `dump()` on the answer. */
export function cdpFullFetch(realFetch: FetchFn): CdpFullFetch {
    const plain = cdpFetch(realFetch)
    return async (input, options) => {
        for (let attempt = 1; ; attempt++) {
            try {
                return { ...(await plain(input, options)), dump: async () => undefined }
            } catch (error) {
                if (isTimeout(error))
                    throw Object.assign(new Error(`Request to ${new URL(input).host} timed out`), {
                        name: 'TimeoutError',
                    })
                if (attempt === 2) throw error
            }
        }
    }
}

/**
 * What `import fetch from 'node-fetch'` gives (sandboxed variants), or the CDP `meta.fetch` before the
 * executor's test-function wrapper: node-fetch 2 underneath every kind (nock 13 intercepts it, and its
 * Response has the standard shape) or the caller's fetch, pointed at the emulator when one is given.
 */
export function fetchesFor(kind: FetchKind, target?: EmulatorTarget, override = hostNodeFetch) {
    const real = target === undefined ? override : redirectingFetch(target, override)
    if (kind === 'node-fetch-2') return { imported: real }
    if (kind === 'undici') return { imported: undiciLikeFetch(real) }
    return { cdp: cdpFullFetch(real) }
}
