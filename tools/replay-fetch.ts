/**
 * What stands between the sandboxed plugin and the network during a replay:
 *
 * - `intercomOnlyFetch`: the real Intercom, and nothing but the one host of the configured region, over https;
 * - `dryRunFetch`: an Intercom answered inside the process, which records what would have been written;
 * - `CallMeter`: counts every call by route, spaces calls out, and reads Intercom's rate-limit headers so the
 *   replay stops handing events to the plugin while Intercom's window is spent.
 */
import { createHash } from 'node:crypto'

import { FetchFn, FetchInit, FetchResponse, HeadersLike, IntercomHost, isIntercomHost } from './load-plugin'
import { Pacer } from './replay-pace'

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

/** Intercom's windows are 10 s; the plugin waits no longer than a minute, and neither does the replay. */
const DEFAULT_PAUSE_MS = 10_000
const MAX_PAUSE_MS = 60_000

/**
 * Until when the replay should hold new events back, judging by one response: a 429, or a window spent to
 * within 1% (the plugin's own threshold, see windowNearlySpent in index.ts). Null when all is well.
 */
export function rateLimitPause(status: number, headers: HeadersLike, now: number): number | null {
    const remaining = Number(headers.get('x-ratelimit-remaining') ?? NaN)
    const limit = Number(headers.get('x-ratelimit-limit') ?? NaN)
    const spent =
        status === 429 ||
        (Number.isFinite(remaining) && remaining <= (Number.isFinite(limit) ? Math.floor(limit / 100) : 0))
    if (!spent) return null
    const reset = Number(headers.get('x-ratelimit-reset') ?? NaN) * 1000
    const until = Number.isFinite(reset) && reset > now ? reset : now + DEFAULT_PAUSE_MS
    return Math.min(until, now + MAX_PAUSE_MS)
}

export interface CallCounts {
    total: number
    byRoute: Record<string, number>
}

export class CallMeter {
    private readonly counts: CallCounts = { total: 0, byRoute: {} }

    /**
     * @param pacer spaces calls out (a cap on calls per second, below Intercom's limit)
     * @param onPause told until when Intercom asked for a pause
     */
    constructor(
        private readonly pacer: Pacer,
        private readonly onPause: (untilMs: number) => void
    ) {}

    wrap(target: FetchFn): FetchFn {
        return async (input, init?: FetchInit): Promise<FetchResponse> => {
            await this.pacer.take()
            const route = routeOf(init?.method ?? 'GET', String(input))
            this.counts.total++
            this.counts.byRoute[route] = (this.counts.byRoute[route] ?? 0) + 1
            const response = await target(input, init)
            const pause = rateLimitPause(response.status, response.headers, Date.now())
            if (pause !== null) this.onPause(pause)
            return response
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

/** How GET /me names the region of each host. */
const REGION_NAMES: Record<IntercomHost, string> = {
    'api.intercom.io': 'US',
    'api.eu.intercom.io': 'Europe',
    'api.au.intercom.io': 'AU',
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
                    app: { type: 'app', region: REGION_NAMES[url.hostname] },
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
