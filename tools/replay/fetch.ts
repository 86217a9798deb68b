/** What stands between the sandboxed plugin and the network in a replay: host guard, dry run, call meter and rate-limit gate. */
import { createIntercom, Region, STAND_IN_OPTIONS } from '../intercom/model'
import { isRecord, parseBody } from '../intercom/rules'
import { addCount } from '../lib/report'
import { sleep } from '../lib/sleep'
import type { FetchFn, FetchInit, FetchResponse, HeadersLike, IntercomHost } from '../runtime/load-plugin'
import { isIntercomHost, regionNameOf } from '../runtime/load-plugin'

// --- Routes and masking

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

// --- The real Intercom

/** The token may only ever travel to this host: anything else is refused before a socket is opened. */
export function intercomOnlyFetch(allowedHost: IntercomHost, base: FetchFn): FetchFn {
    return async (input, init) => {
        const url = new URL(String(input))
        if (url.protocol !== 'https:' || url.hostname !== allowedHost || !['', '443'].includes(url.port)) {
            throw new Error(
                `Refused a request to ${url.protocol}//${url.host}: only https://${allowedHost} is called`
            )
        }
        return base(url.toString(), init)
    }
}

// --- Rate-limit windows and call counts

/** Intercom's windows are 10 s; a window that says nothing of its reset is assumed to be one. */
const DEFAULT_WINDOW_MS = 10_000
/** Never wait longer than a minute on a reset header, as the plugin does. */
const MAX_PAUSE_MS = 60_000
/** Past the reset, so that a call is not counted in the window that just closed. */
const RESET_MARGIN_MS = 25

/**
 * Spends each rate-limit window up to the plugin's threshold (it backs off once an answer says 2% or less is
 * left: windowNearlySpent in index.ts): calls whose answer could say so, in-flight ones counted, wait for the reset.
 */
export class WindowGate {
    private limit = NaN
    /** The lowest X-RateLimit-Remaining seen in the current window. */
    private remaining = Infinity
    /** When the current window resets, ms; 0 while none is known. */
    private resetAt = 0
    private inFlight = 0
    /** The calls made through `wrap`, by route. */
    readonly calls: CallCounts = { total: 0, byRoute: {} }

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

    /** `target` with every call counted by route and passed through the gate. */
    wrap(target: FetchFn): FetchFn {
        return async (input, init?: FetchInit): Promise<FetchResponse> => {
            await this.acquire()
            const route = routeOf(init?.method ?? 'GET', String(input))
            this.calls.total++
            addCount(this.calls.byRoute, route)
            let response: FetchResponse | undefined
            try {
                response = await target(input, init)
                return response
            } finally {
                this.release(response?.status ?? null, response?.headers)
            }
        }
    }
}

export interface CallCounts {
    total: number
    byRoute: Record<string, number>
}

// --- Dry run: Intercom answered in the process

const keysOf = (value: unknown): string[] => (isRecord(value) ? Object.keys(value) : [])

/** A write the dry run did not make, in one line (route, event, created_at, masked contact, keys); undefined for reads. */
function describeWrite(
    route: string,
    body: Record<string, unknown>,
    contactOf: (id: string) => string,
    pathId: string
): string | undefined {
    const listed = (label: string, keys: string[]) => (keys.length ? `${label}${keys.join(', ')}` : '')
    const write = (contact: string, keys = keysOf(body.custom_attributes)): string =>
        `${route}${contact ? ` contact ${contact}` : ''}${listed(' attributes: ', keys)}`
    switch (route) {
        case 'POST /events': {
            const contact = body.id ? contactOf(String(body.id)) : maskEmail(String(body.email ?? ''))
            const created = Number(body.created_at)
            const iso = new Date(created * 1000).toISOString().replace('.000Z', 'Z')
            const metadata = listed('', keysOf(body.metadata)) || '(none)'
            return `${route} "${String(body.event_name)}" created_at ${created} (${iso}) contact ${contact} metadata: ${metadata}`
        }
        case 'POST /contacts':
            return write(body.email ? maskEmail(String(body.email)) : '(unknown)')
        case 'PUT /contacts/{id}':
            return write(contactOf(pathId))
        case 'POST /contacts/{id}/companies':
            return write(contactOf(pathId), [])
        case 'POST /companies':
            return write('')
        case 'POST /data_attributes':
            return write('', [String(body.name)])
    }
    return undefined
}

/**
 * Intercom without a network: the model as a stand-in (everyone a user, any token), each write described to
 * `onWrite`, emails masked; other hosts refused. Events are not kept: memory grows with people, not events.
 */
export function dryRunFetch(onWrite: (write: string) => void): FetchFn {
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
        const write = describeWrite(
            route,
            parseBody(init?.body ?? '', {}).body,
            contactOf,
            url.pathname.split('/')[2] ?? ''
        )
        if (write) onWrite(write)
        const response = await intercom.fetch(url, init)
        intercom.reset()
        return response
    }
}
