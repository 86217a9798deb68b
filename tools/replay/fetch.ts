/**
 * What stands between the sandboxed plugin and the network during a replay:
 *
 * - `intercomOnlyFetch`: the real Intercom, and nothing but the one host of the configured region, over https;
 * - `dryRunFetch`: an Intercom answered inside the process, which records what would have been written;
 * - `CallMeter` and `WindowGate`: count every call by route and spend each of Intercom's rate-limit windows
 *   up to the point where the plugin would back off, then wait for the reset.
 */
import {
    FetchFn,
    FetchInit,
    FetchResponse,
    HeadersLike,
    IntercomHost,
    isIntercomHost,
    regionNameOf,
} from '../runtime/load-plugin'
import { sleep } from './pace'
import { createIntercom, Region, STAND_IN_OPTIONS } from '../intercom/model'

// ---------------------------------------------------------------------------------------------------
// Routes and masking
// ---------------------------------------------------------------------------------------------------

/** `POST /contacts/{id}` rather than one route per contact id. */
export function routeOf(method: string, url: string): string {
    const path = new URL(url).pathname
        .split('/')
        .map((segment, index) => (index === 2 && segment !== 'search' ? '{id}' : segment))
        .join('/')
    return `${method.toUpperCase()} ${path}`
}

/** `a***@example.com`: enough to recognise a person in a dry run, not enough to leak one. */
export function maskEmail(email: string): string {
    const at = email.lastIndexOf('@')
    return at < 1 ? '***' : `${email[0]}***${email.slice(at)}`
}

const EMAIL_IN_TEXT = /[^\s@"'<>(),;:]+@[^\s@"'<>(),;:]+\.[A-Za-z]{2,}/g

/** Any text the replay prints: emails masked, the token (when known) replaced. */
export function redact(text: string, token?: string): string {
    const withoutToken = token && token.length >= 4 ? text.split(token).join('[token]') : text
    return withoutToken.replace(EMAIL_IN_TEXT, (email) => maskEmail(email))
}

// ---------------------------------------------------------------------------------------------------
// Host guard for the real Intercom
// ---------------------------------------------------------------------------------------------------

/** The token may only ever travel to this host: anything else is refused before a socket is opened. */
export function intercomOnlyFetch(allowedHost: IntercomHost, base: FetchFn): FetchFn {
    return (input, init) => {
        const url = new URL(String(input))
        if (
            url.protocol !== 'https:' ||
            url.hostname !== allowedHost ||
            (url.port !== '' && url.port !== '443')
        ) {
            return Promise.reject(
                new Error(
                    `Refused a request to ${url.protocol}//${url.host}: only https://${allowedHost} is called`
                )
            )
        }
        return base(url.toString(), init)
    }
}

// ---------------------------------------------------------------------------------------------------
// Call meter: counts, pacing, rate-limit headers
// ---------------------------------------------------------------------------------------------------

/** Intercom's windows are 10 s; a window that says nothing of its reset is assumed to be one. */
const DEFAULT_WINDOW_MS = 10_000
/** Never wait longer than a minute on a reset header, as the plugin does. */
const MAX_PAUSE_MS = 60_000
/** Past the reset, so that a call is not counted in the window that just closed. */
const RESET_MARGIN_MS = 25

/**
 * Spends Intercom's rate-limit window to the last call the plugin can make without backing off. The plugin
 * stops for the rest of a window once a response says 2% or less of it is left (windowNearlySpent in
 * index.ts); the gate holds every call whose answer could say so, counting the calls in flight, and lets
 * them go when the window resets. So the plugin never backs off, and each window is used to about 98%.
 */
export class WindowGate {
    private limit = NaN
    /** The lowest X-RateLimit-Remaining seen in the current window. */
    private remaining = Infinity
    /** When the current window resets, ms; 0 while none is known. */
    private resetAt = 0
    private inFlight = 0

    constructor(
        private readonly signal?: AbortSignal,
        private readonly now: () => number = Date.now
    ) {}

    /** Calls the plugin may still make in this window without reaching its 2% threshold. */
    private headroom(): number {
        if (this.now() >= this.resetAt) return Infinity // a new window: its budget is whole
        const reserve = Number.isFinite(this.limit) ? Math.floor(this.limit / 50) : 0
        return this.remaining - this.inFlight - reserve - 1
    }

    /** Until when calls wait (0: they may go now). */
    pausedUntil(): number {
        return this.headroom() > 0 ? 0 : this.resetAt + RESET_MARGIN_MS
    }

    async acquire(): Promise<void> {
        for (let until = this.pausedUntil(); until > 0 && !this.signal?.aborted; until = this.pausedUntil()) {
            await sleep(Math.max(1, until - this.now()), this.signal)
        }
        this.inFlight++
    }

    /** Reads the answer's rate-limit headers; a 429 spends the window whatever they say. */
    release(status: number | null, headers?: HeadersLike): void {
        this.inFlight--
        if (!headers) return
        const now = this.now()
        const limit = Number(headers.get('x-ratelimit-limit') ?? NaN)
        const remaining = status === 429 ? 0 : Number(headers.get('x-ratelimit-remaining') ?? NaN)
        const resetHeader = Number(headers.get('x-ratelimit-reset') ?? NaN) * 1000
        if (!Number.isFinite(remaining)) return
        const resetAt = Math.min(
            Number.isFinite(resetHeader) && resetHeader > now ? resetHeader : now + DEFAULT_WINDOW_MS,
            now + MAX_PAUSE_MS
        )
        if (resetAt > this.resetAt + RESET_MARGIN_MS || now >= this.resetAt) {
            this.resetAt = resetAt // a newer window: its own count
            this.remaining = remaining
        } else {
            this.remaining = Math.min(this.remaining, remaining) // answers arrive out of order
        }
        if (Number.isFinite(limit)) this.limit = limit
    }
}

export interface CallCounts {
    total: number
    byRoute: Record<string, number>
}

/** Counts every call by route and passes each through the window gate. */
export class CallMeter {
    private readonly counts: CallCounts = { total: 0, byRoute: {} }

    constructor(readonly gate: WindowGate) {}

    wrap(target: FetchFn): FetchFn {
        return async (input, init?: FetchInit): Promise<FetchResponse> => {
            await this.gate.acquire()
            const route = routeOf(init?.method ?? 'GET', String(input))
            this.counts.total++
            this.counts.byRoute[route] = (this.counts.byRoute[route] ?? 0) + 1
            let response: FetchResponse | undefined
            try {
                response = await target(input, init)
                return response
            } finally {
                this.gate.release(response?.status ?? null, response?.headers)
            }
        }
    }

    snapshot(): CallCounts {
        return { total: this.counts.total, byRoute: { ...this.counts.byRoute } }
    }
}

// ---------------------------------------------------------------------------------------------------
// Dry run: Intercom answered in the process
// ---------------------------------------------------------------------------------------------------

/** A write that the dry run did not make. `contact` is a masked email. */
export interface DryRunWrite {
    route: string
    contact: string
    eventName?: string
    createdAt?: number
    metadataKeys?: string[]
    /** Custom attributes of a contact or company write, or the name of a data attribute. */
    attributeKeys?: string[]
}

type JsonObject = Record<string, unknown>

function jsonBody(init: FetchInit | undefined): JsonObject {
    try {
        const parsed: unknown = JSON.parse(init?.body ?? '{}')
        return typeof parsed === 'object' && parsed !== null ? (parsed as JsonObject) : {}
    } catch {
        return {}
    }
}

function keysOf(value: unknown): string[] {
    return typeof value === 'object' && value !== null ? Object.keys(value) : []
}

/** What a write would have done, with the contact's email masked; undefined for reads. */
function describeWrite(
    route: string,
    body: JsonObject,
    contactOf: (id: string) => string,
    pathId: string
): DryRunWrite | undefined {
    const attributeKeys = keysOf(body.custom_attributes)
    switch (route) {
        case 'POST /events':
            return {
                route,
                contact: body.id ? contactOf(String(body.id)) : maskEmail(String(body.email ?? '')),
                eventName: String(body.event_name),
                createdAt: Number(body.created_at),
                metadataKeys: keysOf(body.metadata),
            }
        case 'POST /contacts':
            return { route, contact: body.email ? maskEmail(String(body.email)) : '(unknown)', attributeKeys }
        case 'PUT /contacts/{id}':
            return { route, contact: contactOf(pathId), attributeKeys }
        case 'POST /contacts/{id}/companies':
            return { route, contact: contactOf(pathId) }
        case 'POST /companies':
            return { route, contact: '', attributeKeys }
        case 'POST /data_attributes':
            return { route, contact: '', attributeKeys: [String(body.name)] }
    }
    return undefined
}

/**
 * Answers like Intercom without a network: the Intercom model in the process as a stand-in (every searched
 * person is a user, any token works), each write reported through `onWrite` with the contact's email masked.
 * Hosts other than Intercom's are refused, as they would be in a real run. Events are not kept: the memory of
 * a long dry run grows with the people, not with the events.
 */
export function dryRunFetch(onWrite: (write: DryRunWrite) => void): FetchFn {
    const intercom = createIntercom(STAND_IN_OPTIONS)
    const { contacts } = intercom.workspace
    const contactOf = (id: string) =>
        contacts.has(id) ? maskEmail(contacts.get(id).email ?? '') : '(unknown)'
    return async (input, init) => {
        const url = new URL(String(input))
        if (url.protocol !== 'https:' || !isIntercomHost(url.hostname)) {
            throw new Error(`Refused a request to ${url.host}: only Intercom's API hosts are called`)
        }
        intercom.configure({ region: regionNameOf(url.hostname) as Region })
        const route = routeOf(init?.method ?? 'GET', url.toString())
        const pathId = url.pathname.split('/')[2] ?? ''
        const write = describeWrite(route, jsonBody(init), contactOf, pathId)
        if (write) onWrite(write)
        const response = await intercom.fetch(url, init)
        intercom.reset()
        return response
    }
}
