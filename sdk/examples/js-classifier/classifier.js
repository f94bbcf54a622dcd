// Example reply classifier in JavaScript: yes/no in English and French,
// numbers, numbered choices and configured keywords. A small cousin of the
// Rust `keywords` classifier (plugins/classifiers/keywords).
//
// componentize-js maps the WIT world `classifier` to this module: the
// exports `describe` and `classify` are its functions, the `host` import is
// the module 'mhero:plugin/host@1.1.0'. Records are plain objects with
// camelCase fields, enums are their WIT names as strings, and throwing a
// `{ tag, val }` object from a function that returns `result` fails the call
// with that error.

import { config, log } from 'mhero:plugin/host@1.1.0';

const NAME = 'js-keywords';
const VERSION = '1.0.0';
const MAX_TEXT = 4096;

// word -> language; null when the word is not specific to one language.
const YES = { yes: 'en', yeah: 'en', y: null, ok: null, okay: 'en', oui: 'fr', ouais: 'fr' };
const NO = { no: null, n: null, nope: 'en', non: 'fr' };

const EN_NUMBERS = ('zero one two three four five six seven eight nine ten eleven twelve ' +
  'thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty').split(' ');
const FR_NUMBERS = ('zero un deux trois quatre cinq six sept huit neuf dix onze douze treize ' +
  'quatorze quinze seize dix-sept dix-huit dix-neuf vingt').split(' ');

// Words that only introduce a choice: "option 2", "choix 3".
const CHOICE_PREFIXES = new Set(['option', 'choice', 'choix', 'number']);

// The engine has no Unicode tables (no `normalize`, no `\p{…}` in regular
// expressions), so accents are folded by hand, as the Rust plugin does.
const ACCENTS = { a: 'àáâãä', c: 'ç', e: 'èéêë', i: 'ìíîï', o: 'òóôõö', u: 'ùúûü', "'": '\u2019`' };
const FOLD = new Map(Object.entries(ACCENTS).flatMap(([plain, marked]) => [...marked].map((m) => [m, plain])));

/** Lowercase, without accents: "Réponse" -> "reponse". */
function fold(text) {
  return [...text.toLowerCase()].map((c) => FOLD.get(c) ?? c).join('');
}

/** Words of a folded text, keeping inner hyphens, dots and commas (1,5). */
function words(folded) {
  return folded
    .split(/[^a-z0-9_'.,\-\u00c0-\uffff]+/)
    .map((w) => w.replace(/^[-.,']+|[-.,']+$/g, ''))
    .filter((w) => w.length > 0);
}

function result(label, confidence, fields = [], language = undefined) {
  return {
    label,
    confidence,
    fields: fields.map(([name, value]) => ({ name, value })),
    language: language ?? undefined,
  };
}

function invalidInput(message) {
  return { tag: 'invalid-input', val: message };
}

/** [label, confidence, language] from the first word, or null. */
function yesNo(folded) {
  const ws = words(folded);
  if (ws.length === 0) return null;
  const confidence = ws.length === 1 ? 0.95 : 0.8;
  for (const [label, lexicon] of [['yes', YES], ['no', NO]]) {
    if (Object.hasOwn(lexicon, ws[0])) return [label, confidence, lexicon[ws[0]]];
  }
  return null;
}

/** [value, confidence, language] for digits or a number word, or null. */
function number(folded) {
  const ws = words(folded);
  for (const w of ws) {
    if (/^\d{1,3}(,\d{3})+(\.\d+)?$/.test(w)) return [w.replace(/,/g, ''), 0.95, null]; // 1,200
    if (/^\d+([.,]\d+)?$/.test(w)) return [w.replace(',', '.'), 0.95, null]; // 12, 3.5, 3,5
  }
  for (const w of ws) {
    const en = EN_NUMBERS.indexOf(w);
    const fr = FR_NUMBERS.indexOf(w);
    if (en >= 0 || fr >= 0) {
      const language = en >= 0 && fr >= 0 ? null : en >= 0 ? 'en' : 'fr';
      return [String(en >= 0 ? en : fr), 0.8, language];
    }
  }
  return null;
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** [1-based index, confidence] of the choice the reply picks, or null. */
function choice(folded, choices) {
  const texts = choices.map((c) => fold(c).trim());
  const exact = texts.indexOf(folded.trim());
  if (exact >= 0) return [exact + 1, 0.95];
  let ws = words(folded);
  if (ws.length > 0 && CHOICE_PREFIXES.has(ws[0])) ws = ws.slice(1);
  if (ws.length === 0) return null;
  const token = ws[0].replace(/^[().]+|[().]+$/g, '');
  let index;
  if (/^\d+$/.test(token)) {
    index = Number(token);
  } else if (/^[a-z]$/.test(token)) {
    index = token.charCodeAt(0) - 'a'.charCodeAt(0) + 1;
  } else {
    // A choice named inside a longer reply: "I think not sure".
    const i = texts.findIndex(
      (t) => t && new RegExp(`(^|[^a-z0-9_\\u00c0-\\uffff])${escapeRegExp(t)}($|[^a-z0-9_\\u00c0-\\uffff])`).test(folded),
    );
    return i >= 0 ? [i + 1, 0.7] : null;
  }
  return index >= 1 && index <= choices.length ? [index, ws.length === 1 ? 0.95 : 0.85] : null;
}

/** The `keywords` setting: label -> list of words (the host passes tables as JSON). */
function configuredKeywords() {
  const raw = config('keywords');
  if (raw === undefined || raw === null) return {};
  let table = null;
  try {
    table = JSON.parse(raw);
  } catch {
    // Reported below.
  }
  if (!table || typeof table !== 'object' || Array.isArray(table) || !Object.values(table).every(Array.isArray)) {
    throw invalidInput('setting `keywords` must be a table of label = [words]');
  }
  return table;
}

/** [label, word] of the first configured keyword found as whole words. */
function keyword(folded, table) {
  const padded = ` ${words(folded).join(' ')} `;
  for (const [label, list] of Object.entries(table)) {
    for (const w of list) {
      if (padded.includes(` ${words(fold(String(w))).join(' ')} `)) return [label, w];
    }
  }
  return null;
}

export function describe() {
  return {
    plugin: {
      name: NAME,
      version: VERSION,
      kind: 'classifier',
      summary: 'Example in JavaScript: yes/no (en, fr), numbers, numbered choices, keywords',
    },
    languages: ['en', 'fr'],
  };
}

export function classify(text, context) {
  const size = new TextEncoder().encode(text).length;
  if (size > MAX_TEXT) throw invalidInput(`reply of ${size} bytes is over ${MAX_TEXT}`);
  const folded = fold(text);
  const hint = context.languageHint;

  switch (context.expected) {
    case 'yes-no': {
      const found = yesNo(folded);
      if (found) return result(found[0], found[1], [], found[2] ?? hint);
      break;
    }
    case 'number': {
      const found = number(folded);
      if (found) return result('number', found[1], [['number', found[0]]], found[2] ?? hint);
      break;
    }
    case 'choice': {
      const found = choice(folded, context.choices);
      if (found) {
        const [index, confidence] = found;
        return result(context.choices[index - 1], confidence, [['choice-index', String(index)]], hint);
      }
      break;
    }
    default: {
      // Free text: configured keywords first, then a weaker yes/no.
      const kw = keyword(folded, configuredKeywords());
      if (kw) return result(kw[0], 0.9, [['keyword', kw[1]]], hint);
      const found = yesNo(folded);
      if (found) return result(found[0], found[1] * 0.8, [], found[2] ?? hint);
    }
  }
  log('debug', `no ${context.expected} answer found`);
  return result('unknown', 0, [], hint);
}
