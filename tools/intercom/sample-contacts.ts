/** The Intercom workspace the demo (`npm start`) starts from.
 * The people of tools/sample-events.jsonl that Intercom already knows, fake names on reserved `.example`
 * domains. Not here on purpose: Linus (created by contact sync when he identifies), the "ghost" (unknown to
 * Intercom: his event is skipped), staff on the ignored domain, custom attributes (the plugin creates them).
 */
import { SeedContact } from './emulator'

/** 2024-04-25 and 2025-01-02 (Unix seconds): the lead predates the user with the same email. */
const OLDER = 1_714_000_000
const NEWER = 1_735_800_000

export const SAMPLE_CONTACTS: SeedContact[] = [
    { email: 'ada@analytical.example', role: 'user', name: 'Ada Lovelace', updated_at: NEWER },
    { email: 'grace@cobol.example', role: 'user', name: 'Grace Hopper', updated_at: NEWER },
    // Emails are not unique in Intercom: an old lead from a form, then the user. The user must win.
    { email: 'alan@bletchley.example', role: 'lead', name: 'Alan Turing (form)', updated_at: OLDER },
    { email: 'alan@bletchley.example', role: 'user', name: 'Alan Turing', updated_at: NEWER },
    // A lead: events to leads need Intercom's contact id, which is why the plugin posts by id.
    { email: 'margaret@apollo.example', role: 'lead', name: 'Margaret Hamilton', updated_at: NEWER },
    { email: 'katherine@orbit.example', role: 'user', name: 'Katherine Johnson', updated_at: NEWER },
]
