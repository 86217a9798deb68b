/** Intercom's request rules, once: pure checks returning every violation of a request.
 * A violation has a status, Intercom's error code, a message and the audit's rule code. The emulator answers
 * the first enforced one; the audit (`requestViolations`) reports them all, `auditOnly` ones too (Intercom
 * accepts them, the plugin promises not to send them). Where the spec is silent the stricter reading is
 * enforced: https://developers.intercom.com/docs/references/2.11/rest-api
 */

export const API_VERSION = '2.11'
/** Intercom keeps the first 10 metadata keys of an event and documents strings up to 255 characters. */
export const MAX_METADATA_KEYS = 10
export const MAX_STRING = 255
/** Above this, a created_at is surely milliseconds (year 2286 in seconds), a classic connector bug. */
const MAX_UNIX_SECONDS = 9_999_999_999
const MAX_MONTHLY_SPEND = 2 ** 31 - 1
export const DEFAULT_PER_PAGE = 50
const MAX_PER_PAGE = 150
/** Intercom: "a limit of max 15 filters for each AND or OR group". */
const MAX_FILTERS_PER_GROUP = 15
export const DATA_TYPES = ['string', 'integer', 'float', 'boolean', 'date', 'datetime'] as const
export type DataType = (typeof DATA_TYPES)[number]
/** What to do with a metadata string over 255 characters: Intercom documents the limit, not the outcome. */
export type LongStringPolicy = 'reject' | 'truncate'

// prettier-ignore
export type RuleCode =
    | 'headers' | 'json' | 'unknown-key' | 'event_name' | 'created_at.integer' | 'created_at.range' | 'identifier'
    | 'metadata.shape' | 'metadata.key' | 'metadata.string' | 'metadata.nested' | 'money.integer' | 'date.integer'
    | 'attribute.value' | 'search'

/** `code`: Intercom's error code, e.g. parameter_invalid; `auditOnly`: Intercom accepts it, the audit not. */
export interface Violation {
    rule: RuleCode
    status: number
    code: string
    message: string
    auditOnly?: boolean
}

type JsonObject = Record<string, unknown>
type HeaderMap = Record<string, string>

function invalid(rule: RuleCode, message: string, status = 400, code = 'parameter_invalid'): Violation {
    return { rule, status, code, message }
}
const missing = (rule: RuleCode, name: string, message = `${name} is required`) =>
    invalid(rule, message, 400, 'parameter_not_found')
const auditOnly = (rule: RuleCode, message: string): Violation => ({
    ...invalid(rule, message),
    auditOnly: true,
})

export const isRecord = (value: unknown): value is JsonObject =>
    typeof value === 'object' && value !== null && !Array.isArray(value)
export const isInteger = (value: unknown): value is number =>
    typeof value === 'number' && Number.isSafeInteger(value)
/** Counts code points, as a person reading "255 characters" would, not UTF-16 units. */
const charLength = (text: string): number => [...text].length
const absent = (value: unknown): value is null | undefined => value === undefined || value === null

// --- headers and body ---------------------------------------------------------------------------------

/** A well-formed `Authorization: Bearer <token>` whose token is in `tokens` ('*': any) when they are given. */
export function authViolations(headers: HeaderMap, tokens?: readonly string[]): Violation[] {
    const token = /^Bearer (\S+)$/.exec(headerOf(headers, 'authorization') ?? '')?.[1]
    const ok = token !== undefined && (!tokens || tokens.includes(token) || tokens.includes('*'))
    return ok ? [] : [{ rule: 'headers', status: 401, code: 'unauthorized', message: 'Access Token Invalid' }]
}

function headerOf(headers: HeaderMap, name: string): string | undefined {
    return Object.entries(headers).find(([key]) => key.toLowerCase() === name)?.[1]
}

/** No Accept header means "anything" in HTTP; one that excludes JSON gets Intercom's 406. */
export function acceptViolations(headers: HeaderMap): Violation[] {
    const accept = headerOf(headers, 'accept')
    const types = (accept ?? '').split(',').map((part) => part.split(';')[0].trim().toLowerCase())
    if (accept?.trim() && !types.some((t) => ['application/json', 'application/*', '*/*'].includes(t))) {
        return [invalid('headers', 'The Accept header must include application/json', 406, 'not_acceptable')]
    }
    return accept === 'application/json' ? [] : [auditOnly('headers', 'Accept is not application/json')]
}

/** The body as a JSON object ({} when blank), or why not; the Content-Type must say JSON. */
export function parseBody(raw: string, headers: HeaderMap): { body: JsonObject; problems: Violation[] } {
    if (raw.trim() === '') return { body: {}, problems: [] }
    const typed = /[/+]json\b/i.test(headerOf(headers, 'content-type') ?? '')
    const problems = typed ? [] : [invalid('headers', 'Content-Type must be application/json')]
    let parsed: unknown
    try {
        parsed = JSON.parse(raw)
    } catch {
        return { body: {}, problems: [...problems, invalid('json', 'The request body is not valid JSON')] }
    }
    if (isRecord(parsed)) return { body: parsed, problems }
    return { body: {}, problems: [...problems, invalid('json', 'The request body must be a JSON object')] }
}

// --- fields ---------------------------------------------------------------------------------------------

/** A field's type: `what` completes "<key> must be …". */
type Field = { ok: (value: unknown) => boolean; what: string }
const field = (what: string, ok: Field['ok']): Field => ({ ok, what })

const STRING = field('a string', (v) => typeof v === 'string')
const SHORT = field(
    `a string of at most ${MAX_STRING} characters`,
    (v) => STRING.ok(v) && charLength(v as string) <= MAX_STRING
)
const INTEGER = field('an integer', isInteger)
const OBJECT = field('an object', isRecord)
const ROLE = field("either 'user' or 'lead'", (v) => v === 'user' || v === 'lead')
const BOOLEAN = field('a boolean', (v) => typeof v === 'boolean')
const SPEND = field(
    `a number up to ${MAX_MONTHLY_SPEND}`,
    (v) => typeof v === 'number' && Number.isFinite(v) && v <= MAX_MONTHLY_SPEND
)

/** Body keys each route accepts, checked in this order: Intercom answers "bad 'x' parameter" to others. */
// prettier-ignore
const CONTACT_FIELDS: Record<string, Field> = {
    role: ROLE, external_id: SHORT, email: SHORT, phone: SHORT, name: SHORT, avatar: STRING,
    signed_up_at: INTEGER, last_seen_at: INTEGER, owner_id: INTEGER, unsubscribed_from_emails: BOOLEAN,
    custom_attributes: OBJECT,
}
// prettier-ignore
const COMPANY_FIELDS: Record<string, Field> = {
    company_id: STRING, name: STRING, plan: STRING, size: INTEGER, website: STRING, industry: STRING,
    custom_attributes: OBJECT, remote_created_at: INTEGER, monthly_spend: SPEND,
}
const EVENT_KEYS = ['event_name', 'created_at', 'id', 'user_id', 'email', 'metadata']
export const EVENT_IDENTIFIERS = ['id', 'user_id', 'email'] as const
const SEARCH_KEYS = ['query', 'pagination', 'sort']
const DATA_ATTRIBUTE_KEYS = ['name', 'model', 'data_type', 'description', 'options', 'messenger_writable']

function unknownKeys(body: JsonObject, allowed: readonly string[]): Violation[] {
    return Object.keys(body)
        .filter((key) => !allowed.includes(key))
        .map((key) => invalid('unknown-key', `bad '${key}' parameter`, 400, 'bad_request'))
}

/** Unknown keys, then each field of the wrong type (null clears a field), then custom attributes. */
function fieldViolations(body: JsonObject, fields: Record<string, Field>): Violation[] {
    const wrong = Object.entries(fields)
        .filter(([key, field]) => !absent(body[key]) && !field.ok(body[key]))
        .map(([key, field]) => invalid('attribute.value', `${key} must be ${field.what}`))
    const attributes = isRecord(body.custom_attributes) ? attributeViolations(body.custom_attributes) : []
    return [...unknownKeys(body, Object.keys(fields)), ...wrong, ...attributes]
}

/** Flat values only; the audit also wants dates (`_at`, `_date`) as Unix seconds and strings within 255. */
function attributeViolations(values: JsonObject): Violation[] {
    return Object.entries(values).flatMap(([name, value]): Violation[] => {
        if (!absent(value) && !STRING.ok(value) && !BOOLEAN.ok(value) && !Number.isFinite(value)) {
            const message = `Custom attribute '${name}' must be a string, number or boolean`
            return [invalid('attribute.value', message)]
        }
        if (/(_at|_date)$/i.test(name) && value !== null && !(isInteger(value) && value >= 0)) {
            return [auditOnly('date.integer', `attribute '${name}' is not Unix seconds`)]
        }
        const long = typeof value === 'string' && charLength(value) > MAX_STRING
        return long ? [auditOnly('attribute.value', `attribute '${name}' is longer than ${MAX_STRING}`)] : []
    })
}

// --- POST /events -----------------------------------------------------------------------------------------

function eventViolations(body: JsonObject, longStrings: LongStringPolicy): Violation[] {
    const name = body.event_name
    const createdAt = body.created_at
    const problems = unknownKeys(body, EVENT_KEYS)
    if (absent(name)) problems.push(missing('event_name', 'event_name'))
    else if (typeof name !== 'string' || name.trim() === '')
        problems.push(invalid('event_name', 'event_name must be a non-empty string'))
    const seconds = 'created_at must be an integer UTC Unix timestamp in seconds'
    if (absent(createdAt)) problems.push(missing('created_at.integer', 'created_at'))
    else if (!isInteger(createdAt)) problems.push(invalid('created_at.integer', seconds))
    else if (createdAt < 0 || createdAt > MAX_UNIX_SECONDS)
        problems.push(invalid('created_at.range', seconds))
    return [...problems, ...identifierViolations(body), ...metadataViolations(body.metadata, longStrings)]
}

/** Exactly one of id, user_id, email (the spec's three `anyOf` branches); null counts as absent. */
function identifierViolations(body: JsonObject): Violation[] {
    const present = EVENT_IDENTIFIERS.filter((key) => !absent(body[key]))
    if (present.length === 0) return [missing('identifier', '', 'One of id, user_id or email is required')]
    if (present.length > 1) {
        const got = present.join(' and ')
        return [
            invalid('identifier', `Exactly one of id, user_id or email may identify the contact, got ${got}`),
        ]
    }
    const value = body[present[0]]
    const ok = typeof value === 'string' && value !== ''
    return ok ? [] : [invalid('identifier', `${present[0]} must be a non-empty string`)]
}

/**
 * Flat metadata as documented: strings, numbers (and booleans), rich links {url, value} and monetary amounts
 * {amount: integer cents, currency}. Intercom ignores keys past the 10th; the audit counts them.
 */
function metadataViolations(metadata: unknown, longStrings: LongStringPolicy): Violation[] {
    if (metadata === undefined) return []
    if (metadata === null) return [auditOnly('metadata.shape', 'metadata is null')]
    if (!isRecord(metadata)) return [invalid('metadata.shape', 'metadata must be an object')]
    const keys = Object.keys(metadata)
    const problems =
        keys.length > MAX_METADATA_KEYS ? [auditOnly('metadata.shape', `${keys.length} metadata keys`)] : []
    for (const key of keys) {
        if (key.trim() === '' || /[.$]/.test(key)) {
            const message = `metadata key '${key}' is invalid: keys must be non-empty and contain no '.' or '$'`
            problems.push(invalid('metadata.key', message))
        }
        problems.push(...metadataValueViolations(key, metadata[key], longStrings))
    }
    return problems
}

function metadataValueViolations(key: string, value: unknown, longStrings: LongStringPolicy): Violation[] {
    if (typeof value === 'string') {
        if (charLength(value) <= MAX_STRING) return []
        const message = `metadata '${key}' is longer than ${MAX_STRING} characters`
        return [(longStrings === 'truncate' ? auditOnly : invalid)('metadata.string', message)]
    }
    if (typeof value === 'number') {
        // Keys ending in _date hold Unix seconds (Intercom's date type).
        return key.endsWith('_date') && !isInteger(value)
            ? [auditOnly('date.integer', `'${key}' is ${value}`)]
            : []
    }
    if (typeof value === 'boolean' || isRichValue(value)) return []
    const unsupported =
        `metadata '${key}' is not supported: nested objects and arrays are not allowed, ` +
        'only rich links {url, value} and monetary amounts {amount, currency}'
    return [invalid(hasKeys(value, 'amount,currency') ? 'money.integer' : 'metadata.nested', unsupported)]
}

const hasKeys = (value: unknown, sortedKeys: string): value is JsonObject =>
    isRecord(value) && Object.keys(value).sort().join() === sortedKeys

/** A rich link {url, value} or a monetary amount {amount, currency}: the only objects metadata may hold. */
function isRichValue(value: unknown): boolean {
    if (hasKeys(value, 'url,value'))
        return /^https?:\/\//i.test(String(value.url)) && [value.url, value.value].every(STRING.ok)
    if (!hasKeys(value, 'amount,currency')) return false
    return isInteger(value.amount) && STRING.ok(value.currency) && value.currency !== ''
}

// --- POST /contacts/search --------------------------------------------------------------------------------

const SEARCH_FIELDS = ['id', 'email', 'external_id', 'role', 'name', 'phone'] as const
const SEARCH_OPERATORS = ['=', '!=', 'IN', 'NIN'] as const
type SearchFilter = {
    field: (typeof SEARCH_FIELDS)[number]
    operator: (typeof SEARCH_OPERATORS)[number]
    value: string | string[]
}
type SearchGroup = { operator: 'AND' | 'OR'; value: SearchNode[] }
export type SearchNode = SearchFilter | SearchGroup

export const isGroup = (node: SearchNode): node is SearchGroup =>
    node.operator === 'AND' || node.operator === 'OR'

function searchNodeViolations(node: unknown): Violation[] {
    if (!isRecord(node)) return [invalid('search', 'query must be an object')]
    const { field, operator, value } = node
    if (operator === 'AND' || operator === 'OR') {
        if (!Array.isArray(value) || value.length === 0)
            return [invalid('search', `${operator} needs a non-empty list of filters`)]
        if (value.length > MAX_FILTERS_PER_GROUP) {
            const message = `A maximum of ${MAX_FILTERS_PER_GROUP} filters is allowed in each ${operator} group`
            return [invalid('search', message)]
        }
        return value.flatMap(searchNodeViolations)
    }
    if (!(SEARCH_FIELDS as readonly unknown[]).includes(field)) {
        const message = `The emulator can search on ${SEARCH_FIELDS.join(', ')}; not on '${String(field)}'`
        return [invalid('search', message)]
    }
    if (!(SEARCH_OPERATORS as readonly unknown[]).includes(operator)) {
        const supported = SEARCH_OPERATORS.join(', ')
        const message = `The emulator supports the operators ${supported}; not '${String(operator)}'`
        return [invalid('search', message)]
    }
    const list = operator === 'IN' || operator === 'NIN'
    const ok = list ? Array.isArray(value) && value.every(STRING.ok) : STRING.ok(value)
    const expected = list ? 'a list of strings' : 'a string'
    const message = `The value for ${String(field)} ${String(operator)} must be ${expected}`
    return ok ? [] : [invalid('search', message)]
}

export type Pagination = { perPage: number; offset: number }

/** `starting_after` is the opaque cursor of the previous page's `pages.next`; here a base64 offset. */
export function paginationOf(value: unknown): Pagination | string {
    if (absent(value)) return { perPage: DEFAULT_PER_PAGE, offset: 0 }
    if (!isRecord(value)) return 'pagination must be an object'
    const perPage = value.per_page ?? DEFAULT_PER_PAGE
    if (!isInteger(perPage) || perPage < 1 || perPage > MAX_PER_PAGE) {
        return `per_page must be an integer between 1 and ${MAX_PER_PAGE}`
    }
    const cursor = value.starting_after
    if (absent(cursor)) return { perPage, offset: 0 }
    const offset = typeof cursor === 'string' ? Number(Buffer.from(cursor, 'base64').toString()) : NaN
    return isInteger(offset) && offset >= 0 ? { perPage, offset } : 'starting_after is not a valid cursor'
}

/** The plugin looks people up by one `email` or `external_id`, nothing fancier. */
const isPluginLookup = (query: unknown) =>
    isRecord(query) &&
    ['email', 'external_id'].includes(query.field as string) &&
    query.operator === '=' &&
    STRING.ok(query.value) &&
    query.value !== ''

function searchViolations(body: JsonObject): Violation[] {
    const problems = unknownKeys(body, SEARCH_KEYS)
    if (absent(body.query)) return [...problems, missing('search', 'query')]
    problems.push(...searchNodeViolations(body.query))
    const pagination = paginationOf(body.pagination)
    if (typeof pagination === 'string') problems.push(invalid('search', pagination))
    if (!isPluginLookup(body.query)) problems.push(auditOnly('search', 'not an email or external_id = query'))
    return problems
}

// --- the other routes, and the table of routes ------------------------------------------------------------

function companyViolations(body: JsonObject): Violation[] {
    const problems = fieldViolations(body, COMPANY_FIELDS)
    const id = body.company_id
    return absent(id) || id === '' ? [...problems, missing('attribute.value', 'company_id')] : problems
}

const NAME_RULE =
    'Your name for this attribute must only contain alphanumeric characters, currency symbols, and hyphens'

function dataAttributeViolations(body: JsonObject): Violation[] {
    const { name, model, data_type: dataType } = body
    const problems = unknownKeys(body, DATA_ATTRIBUTE_KEYS)
    const wrong = (message: string) => problems.push(invalid('attribute.value', message))
    if (model !== 'contact' && model !== 'company')
        wrong('The Data Attribute model field must be either contact or company')
    if (!DATA_TYPES.includes(dataType as DataType)) wrong("Data Type isn't an option")
    const named = typeof name === 'string' && /^[\p{L}\p{N}\p{Sc}_\- ]+$/u.test(name) && name.trim() !== ''
    if (!named) wrong(NAME_RULE)
    if (!absent(body.description) && !STRING.ok(body.description)) wrong('description must be a string')
    return problems
}

function attachViolations(body: JsonObject): Violation[] {
    const id = body.id
    if (absent(id) || id === '') return [missing('identifier', '', 'company not specified')]
    return typeof id === 'string' ? [] : [invalid('identifier', 'id must be a string')]
}

type BodyCheck = (body: JsonObject, longStrings: LongStringPolicy) => Violation[]
const contactViolations: BodyCheck = (body) => fieldViolations(body, CONTACT_FIELDS)

/** Every route, `METHOD /path` with `{id}` parameters; more specific paths first (search is no contact id). */
const ROUTES = {
    'GET /me': undefined,
    'POST /contacts/search': searchViolations,
    'POST /contacts': contactViolations,
    'GET /contacts/{id}': undefined,
    'PUT /contacts/{id}': contactViolations,
    'POST /contacts/{id}/companies': attachViolations,
    'POST /companies': companyViolations,
    'GET /data_attributes': undefined,
    'POST /data_attributes': dataAttributeViolations,
    'POST /events': eventViolations,
} satisfies Record<string, BodyCheck | undefined>
export type RouteName = keyof typeof ROUTES

const PATTERNS = Object.keys(ROUTES).map((name) => {
    const [method, path] = name.split(' ')
    return { name: name as RouteName, method, pattern: new RegExp(`^${path.replace(/\{id\}/g, '([^/]+)')}$`) }
})

/** `params`: the path's `{id}` parameters, percent-decoded. */
export type RouteMatch = { name: RouteName; params: string[]; check?: BodyCheck }

export function findRoute(method: string, path: string): RouteMatch | undefined {
    for (const { name, method: routeMethod, pattern } of PATTERNS) {
        const match = routeMethod === method ? pattern.exec(path) : null
        if (!match) continue
        try {
            return { name, check: ROUTES[name], params: match.slice(1).map((p) => decodeURIComponent(p)) }
        } catch {
            return undefined // malformed percent-encoding: no such resource
        }
    }
    return undefined
}

// --- the audit ------------------------------------------------------------------------------------------

/** Every rule a request breaks, as `[rule] message`; the body is checked as sent (JSON text). */
export function requestViolations(method: string, path: string, headers: HeaderMap, raw?: string): string[] {
    const { body, problems } = parseBody(raw ?? '', headers)
    const route = problems.some((p) => p.rule === 'json') ? undefined : findRoute(method, path)
    const version = headerOf(headers, 'intercom-version') === API_VERSION
    return [
        ...authViolations(headers),
        ...acceptViolations(headers),
        ...(version ? [] : [auditOnly('headers', 'Intercom-Version')]),
        ...problems,
        ...(route?.check?.(body, 'reject') ?? []),
    ].map((v) => `[${v.rule}] ${v.message}`)
}

export const ruleOf = (text: string): RuleCode | null => (/^\[([^\]]+)\]/.exec(text)?.[1] as RuleCode) ?? null
