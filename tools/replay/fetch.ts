/**
 * What stands between the sandboxed plugin and the network during a replay:
 *
 * - `intercomOnlyFetch`: the real Intercom, and nothing but the one host of the configured region, over https;
 * - `dryRunFetch`: an Intercom answered inside the process, which records what would have been written;
 * - `CallMeter` and `WindowGate`: count every call by route and spend each of Intercom's rate-limit windows
 *   up to the point where the plugin would back off, then wait for the reset.
 */
import { createHash } from 'node:crypto'

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

function reply(status: number, body?: unknown): FetchResponse {
    const text = body === undefined ? null : JSON.stringify(body)
    return new Response(text, { status, headers: { 'content-type': 'application/json' } })
}

function fakeId(prefix: string, seed: string): string {
    return `${prefix}-${createHash('sha256').update(seed).digest('hex').slice(0, 16)}`
}

const CONTACT_PREFIX = 'dry-run-contact-'
const HASH_LENGTH = 12

/**
 * A stable fake contact id that carries the masked email (base64url, safe in a URL path), so that a dry run
 * over millions of people keeps no table of them.
 */
function fakeContactId(email: unknown): string {
    const text = typeof email === 'string' ? email : ''
    const hash = createHash('sha256').update(text).digest('hex').slice(0, HASH_LENGTH)
    return CONTACT_PREFIX + hash + Buffer.from(text ? maskEmail(text) : '(unknown)').toString('base64url')
}

function maskedEmailOf(id: unknown): string {
    const text = String(id)
    if (!text.startsWith(CONTACT_PREFIX)) return '(unknown)'
    return Buffer.from(text.slice(CONTACT_PREFIX.length + HASH_LENGTH), 'base64url').toString('utf8')
}

function keysOf(value: unknown): string[] {
    return typeof value === 'object' && value !== null ? Object.keys(value) : []
}

/**
 * Answers like Intercom without a network: every searched email "exists" (a stable fake id), every write
 * succeeds, and each write is reported through `onWrite` with the contact's email masked. Hosts other than
 * Intercom's are refused, as they would be in a real run.
 */
export function dryRunFetch(onWrite: (write: DryRunWrite) => void): FetchFn {
    return async (input, init) => {
        const url = new URL(String(input))
        if (url.protocol !== 'https:' || !isIntercomHost(url.hostname)) {
            throw new Error(`Refused a request to ${url.host}: only Intercom's API hosts are called`)
        }
        const method = (init?.method ?? 'GET').toUpperCase()
        const route = routeOf(method, url.toString())
        const body = jsonBody(init)
        const pathId = url.pathname.split('/')[2] ?? ''
        switch (route) {
            case 'GET /me':
                return reply(200, {
                    type: 'admin',
                    id: '0',
                    app: { type: 'app', region: regionNameOf(url.hostname) },
                })
            case 'POST /contacts/search': {
                const query = body.query as JsonObject | undefined
                const id = fakeContactId(query?.value)
                return reply(200, {
                    type: 'list',
                    data: [{ type: 'contact', id, role: 'user' }],
                    total_count: 1,
                })
            }
            case 'POST /events':
                onWrite({
                    route,
                    contact: body.id ? maskedEmailOf(body.id) : maskEmail(String(body.email ?? '')),
                    eventName: String(body.event_name),
                    createdAt: Number(body.created_at),
                    metadataKeys: keysOf(body.metadata),
                })
                return reply(202)
            case 'POST /contacts': {
                const id = fakeContactId(body.email)
                onWrite({
                    route,
                    contact: maskedEmailOf(id),
                    attributeKeys: keysOf(body.custom_attributes),
                })
                return reply(200, { type: 'contact', id })
            }
            case 'PUT /contacts/{id}':
                onWrite({
                    route,
                    contact: maskedEmailOf(pathId),
                    attributeKeys: keysOf(body.custom_attributes),
                })
                return reply(200, { type: 'contact', id: pathId })
            case 'POST /contacts/{id}/companies':
                onWrite({ route, contact: maskedEmailOf(pathId) })
                return reply(200, { type: 'company', id: String(body.id) })
            case 'POST /companies': {
                const id = fakeId('dry-run-company', String(body.company_id))
                onWrite({ route, contact: '', attributeKeys: keysOf(body.custom_attributes) })
                return reply(200, { type: 'company', id, company_id: body.company_id })
            }
            case 'POST /data_attributes':
                onWrite({ route, contact: '', attributeKeys: [String(body.name)] })
                return reply(200, { type: 'data_attribute', name: body.name, model: body.model })
            default:
                return reply(404, {
                    type: 'error.list',
                    errors: [{ code: 'not_found', message: 'Resource Not Found' }],
                })
        }
    }
}
