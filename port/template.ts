// The port's entry for PostHog's executor. `template` is generated from plugin.json (`npm run port -- --refresh`).
import { RetryError } from '~/plugin-scaffold'

import { LegacyDestinationPlugin } from '../../types'
import { onEvent, setupPlugin } from './index'

/**
 * index.ts throws the npm scaffold's RetryError; PostHog's executor re-queues only its own class, so a
 * retryable failure is handed over as that class (same message).
 */
function asPostHogRetry(error: unknown): unknown {
    const named = error as { name?: unknown; message?: unknown } | null
    const retry = named?.name === 'RetryError' && !(error instanceof RetryError)
    return retry ? new RetryError(String(named?.message ?? '')) : error
}

/** Replaces PostHog's port of the original Intercom app: same id, and its 4 inputs keep their meaning. */
export const intercomPlugin: LegacyDestinationPlugin = {
    // index.ts types the meta it reads itself (it runs in six PostHog runtimes); the executor passes more.
    onEvent: async (event, meta) => {
        try {
            await onEvent(event, meta as never)
        } catch (error) {
            throw asPostHogRetry(error)
        }
    },
    setupPlugin: (meta) => setupPlugin(meta as never),
    template: {
        free: false,
        status: 'deprecated',
        type: 'destination',
        id: 'plugin-posthog-intercom-plugin',
        name: 'Intercom',
        description:
            "Sends the PostHog events you choose to Intercom as [data events](https://developers.intercom.com/docs/references/rest-api/api.intercom.io/data-events) on the matching Intercom contact (users and leads), found by email or by external ID, with useful metadata, rate-limit aware and without losing events. It can also keep Intercom contacts and companies in step with PostHog's person and group properties. Events of people unknown to Intercom are skipped unless contact creation is on.",
        icon_url: 'https://raw.githubusercontent.com/PostHog/posthog-intercom-plugin/main/logo.png',
        category: [],
        code_language: 'javascript',
        code: 'return event',
        inputs_schema: [
            {
                key: 'intercomApiKey',
                label: 'Intercom API key',
                type: 'string',
                description:
                    'An access token: in Intercom open Settings → Integrations → Developer Hub, create (or open) an app, then Authentication → Access token. It needs read and write access to users and companies and to data events.',
                required: true,
                secret: true,
                templating: false,
            },
            {
                key: 'region',
                label: 'Region',
                type: 'choice',
                description:
                    'Where your Intercom workspace is hosted: US → api.intercom.io, EU → api.eu.intercom.io, AU → api.au.intercom.io. The plugin checks it against your workspace when it starts.',
                default: 'US',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'US',
                        label: 'US',
                    },
                    {
                        value: 'EU',
                        label: 'EU',
                    },
                    {
                        value: 'AU',
                        label: 'AU',
                    },
                ],
            },
            {
                key: 'triggeringEvents',
                label: 'Triggering events',
                type: 'string',
                description:
                    'Comma-separated PostHog event names to send to Intercom, e.g. `$identify,signed_up`. Intercom allows at most 120 distinct event names per workspace. May be empty only when contact or company sync is on.',
                default: '$identify',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'contactIdentifier',
                label: 'Match Intercom contacts by',
                type: 'choice',
                description:
                    "`email`: the person's email (one search per person, then cached). `external ID`: Intercom's User ID (`external_id`), taken from *External ID* below, so people without an email are sent too (users need no search; a lead costs one search, then cached). `external ID, else email`: the external ID when the person has one, else the email.",
                default: 'email',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'email',
                        label: 'email',
                    },
                    {
                        value: 'external ID',
                        label: 'external ID',
                    },
                    {
                        value: 'external ID, else email',
                        label: 'external ID, else email',
                    },
                ],
            },
            {
                key: 'emailProperty',
                label: 'Email property',
                type: 'string',
                description:
                    "Where to find the person's email. Looked for, in order, in the event property, `$set`, `$set_once`, the person's properties, and the distinct ID if it is an email.",
                default: 'email',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'externalId',
                label: 'External ID',
                type: 'choice',
                description:
                    "Intercom's User ID (`external_id`) of a person, used to match contacts (see above) and sent on contact sync: the PostHog distinct ID (never an anonymous one), or the property named below.",
                default: 'none',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'none',
                        label: 'none',
                    },
                    {
                        value: 'distinct_id',
                        label: 'distinct_id',
                    },
                    {
                        value: 'property',
                        label: 'property',
                    },
                ],
            },
            {
                key: 'externalIdProperty',
                label: 'External ID property',
                type: 'string',
                description:
                    "The property holding the external ID, e.g. `account_id`: looked for in the event properties, `$set`, `$set_once`, then the person's properties.",
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'ignoredEmailDomains',
                label: 'Ignored email domains',
                type: 'string',
                description:
                    'Comma-separated domains whose people are never sent, e.g. `posthog.com,example.com` (domains only: no `@`, no URL). Subdomains are ignored too; case does not matter.',
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'metadataProperties',
                label: 'Event properties to send',
                type: 'string',
                description:
                    'Comma-separated event properties sent as Intercom event metadata, in this order (Intercom keeps the first 10). Rename with `property:intercom_key`, e.g. `plan,$current_url:url,revenue`. `*` sends all properties not starting with `$`. Values already shaped as `{amount, currency}` or `{url, value}` are sent as a monetary amount or a rich link; keys ending in `_date` are sent as dates.',
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'revenueProperties',
                label: 'Revenue properties',
                type: 'string',
                description:
                    'Comma-separated event properties sent as a monetary amount when a currency is known, e.g. `revenue,price`. An amount of 0 or less is sent as a plain number.',
                default: 'revenue,price',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'currencyProperty',
                label: 'Currency property',
                type: 'string',
                description:
                    'The event property holding the ISO currency code of the revenue, e.g. `currency`.',
                default: 'currency',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'defaultCurrency',
                label: 'Default currency',
                type: 'string',
                description:
                    'The currency of revenue when the event has none, e.g. `EUR`. Empty: revenue without a currency is sent as a plain number.',
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'eventNameMapping',
                label: 'Event name mapping',
                type: 'string',
                description:
                    'Optional comma-separated `posthog_event:intercom_event` pairs, e.g. `$identify:identified,purchase:purchased`. Unmapped events keep their PostHog name.',
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'useEuropeanDataStorage',
                label: 'Use European data storage (from the original Intercom app)',
                type: 'choice',
                description:
                    "Kept so that installs of PostHog's original Intercom app keep working: `Yes` (or `True`, as older installs saved it) means the EU region while Region is US; `No` and `False` change nothing. New installs: leave it at No and use Region.",
                default: 'No',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'No',
                        label: 'No',
                    },
                    {
                        value: 'Yes',
                        label: 'Yes',
                    },
                    {
                        value: 'False',
                        label: 'False',
                    },
                    {
                        value: 'True',
                        label: 'True',
                    },
                ],
            },
            {
                key: 'contactSync',
                label: 'Contact sync',
                type: 'choice',
                description:
                    '**Contact and company sync.** `on`: keeps Intercom contacts in step with the person properties you set in PostHog (`$set`), so Intercom segments can use them. Any event that carries `$set`/`$set_once` (and every `$identify`) is synced, not only triggering events. Unchanged values cost no API call. People unknown to Intercom are created only when *Create contacts for unknown people* is on.',
                default: 'off',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'off',
                        label: 'off',
                    },
                    {
                        value: 'on',
                        label: 'on',
                    },
                ],
            },
            {
                key: 'personProperties',
                label: 'Person properties to sync',
                type: 'string',
                description:
                    "Comma-separated person properties sent as Intercom custom attributes; rename with `property:Intercom name`, e.g. `plan:Plan name,seats`. `*` syncs every person property not starting with `$`. Name, phone and first/last name always go to Intercom's standard fields. Keys ending in `_at` or `_date` are sent as dates; nested values become `parent_child` attributes (3 levels, 20 keys per property at most).",
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'updateLastSeen',
                label: 'Update last seen',
                type: 'choice',
                description:
                    "Yes: a synced contact's `last_seen_at` is set from the event time (events of the last 24 hours; at most one update an hour per person when nothing else changed).",
                default: 'Yes',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'Yes',
                        label: 'Yes',
                    },
                    {
                        value: 'No',
                        label: 'No',
                    },
                ],
            },
            {
                key: 'createContacts',
                label: 'Create contacts for unknown people',
                type: 'choice',
                description:
                    "When a triggering event's person, or a synced person, is unknown to Intercom, create the contact with this role so nothing is lost. Off: such events wait a few minutes for Intercom's search (new contacts), then are skipped; sync only updates existing contacts.",
                default: 'off',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'off',
                        label: 'off',
                    },
                    {
                        value: 'as lead',
                        label: 'as lead',
                    },
                    {
                        value: 'as user',
                        label: 'as user',
                    },
                ],
            },
            {
                key: 'createAttributes',
                label: 'Create missing custom attributes',
                type: 'choice',
                description:
                    'For contact and company sync. Yes: custom attributes that do not exist in Intercom yet are created (once each, typed from the first value). No: an unknown attribute is reported as an error.',
                default: 'No',
                required: false,
                secret: false,
                templating: false,
                choices: [
                    {
                        value: 'No',
                        label: 'No',
                    },
                    {
                        value: 'Yes',
                        label: 'Yes',
                    },
                ],
            },
            {
                key: 'companyGroupType',
                label: 'Company group type',
                type: 'string',
                description:
                    'The PostHog group type that maps to Intercom companies, e.g. `company`. `$groupidentify` creates or updates the company (`company_id` = group key); people whose events name the group are attached to it, once. Empty: off.',
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
            {
                key: 'companyProperties',
                label: 'Company properties to sync',
                type: 'string',
                description:
                    'Comma-separated group properties (`$group_set`) sent as company custom attributes; rename with `property:Intercom name`, e.g. `plan,employees:Employees`. `name` always goes to the company name; nested values become `parent_child` attributes.',
                default: '',
                required: false,
                secret: false,
                templating: false,
            },
        ],
    } as LegacyDestinationPlugin['template'],
}
