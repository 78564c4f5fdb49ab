"""Conditional search spaces: `hydra.sweeper.when` maps search-key globs to a condition on keys drawn before.

    when:
      model.layers.layer4.*: model.num_layers >= 4
      model.layers.layer5.*: model.num_layers >= 5 and stem == conv3x3

A key is drawn (Optuna's define-by-run: `suggest` only when its condition holds) in the order of the search
space, the preset's first; a key whose condition does not hold is not drawn, not recorded and not passed to
the job, which keeps its config's own value. Conditions are parsed and checked once, before the first
proposal, by a small tokenizer and parser here (no `eval`):

    condition  := clause (("and" | "or") clause)*       "and" binds tighter than "or"; no parentheses
    clause     := key op value | key ["not"] "in" "[" value ("," value)* "]"
    op         := == | != | < | <= | > | >=
    value      := a number, true | false | null, a bare word (a string) or a quoted string

A clause on a key that was not drawn (itself conditional) is false.
"""
import fnmatch
import operator
import re

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from errors import UsageError

OPS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|<=|>=|<|>)|(?P<quoted>'[^']*'|\"[^\"]*\")|(?P<punct>[\[\],])"
                   r"|(?P<word>[A-Za-z0-9_.+\-/:@]+))")


def _literal(token):
    kind, text = token
    if kind == "quoted":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _tokens(text):
    tokens, at = [], 0
    text = text.rstrip()
    while at < len(text):
        match = TOKEN.match(text, at)
        if not match or match.end() == at:
            raise ValueError(f"cannot read {text[at:].strip()!r}")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        at = match.end()
    return tokens


class Clause:
    def __init__(self, key, op, values, negate=False):
        self.key, self.op, self.values, self.negate = key, op, values, negate  # op: one of OPS, or "in"

    def holds(self, drawn):
        if self.key not in drawn:
            return False
        value = drawn[self.key]
        if self.op == "in":
            return (value in self.values) != self.negate
        try:
            return OPS[self.op](value, self.values[0])
        except TypeError:
            return False


class Condition:
    """One condition's text, its clauses as `or` of `and`s, and the keys it reads."""

    def __init__(self, text):
        self.text = str(text)
        self.any_of = self._parse(_tokens(self.text))
        self.keys = [clause.key for group in self.any_of for clause in group]

    def holds(self, drawn):
        return any(all(clause.holds(drawn) for clause in group) for group in self.any_of)

    @staticmethod
    def _parse(tokens):
        groups, group, at = [], [], 0

        def take(kinds=None, words=None):
            nonlocal at
            if at >= len(tokens):
                raise ValueError("it ends too early")
            kind, text = tokens[at]
            if (kinds and kind not in kinds) or (words and text.lower() not in words):
                raise ValueError(f"unexpected {text!r}")
            at += 1
            return kind, text

        while True:
            key = take(("word",))[1]
            kind, text = take(("op", "word"))
            if kind == "op":
                clause = Clause(key, text, [_literal(take(("word", "quoted")))])
            else:
                negate = text.lower() == "not"
                if negate:
                    take(("word",), ("in",))
                elif text.lower() != "in":
                    raise ValueError(f"unexpected {text!r}: use ==, !=, <, <=, >, >= or in [...]")
                take(("punct",), ("[",))
                values = [_literal(take(("word", "quoted")))]
                while take(("punct",), (",", "]"))[1] == ",":
                    values.append(_literal(take(("word", "quoted"))))
                clause = Clause(key, "in", values, negate)
            group.append(clause)
            if at == len(tokens):
                groups.append(group)
                return groups
            joint = take(("word",), ("and", "or"))[1].lower()
            if joint == "or":
                groups.append(group)
                group = []


def _numeric(distribution):
    if isinstance(distribution, (IntDistribution, FloatDistribution)):
        return True
    return isinstance(distribution, CategoricalDistribution) and all(
        isinstance(c, (int, float)) and not isinstance(c, bool) for c in distribution.choices)


def _check_values(key, clause, distribution):
    """A literal that the key can never take is a typo: `stem == conv7x7` when stem is choice(conv3x3, conv5x5)."""
    if clause.op in ("<", "<=", ">", ">="):
        if not _numeric(distribution) or not isinstance(clause.values[0], (int, float)):
            return f"{clause.op} compares numbers; {key} is {distribution.__class__.__name__}" \
                   f"{'(' + ', '.join(map(str, distribution.choices)) + ')' if hasattr(distribution, 'choices') else ''}"
        return None
    if isinstance(distribution, (IntDistribution, FloatDistribution)):
        wrong = [v for v in clause.values if isinstance(v, bool) or not isinstance(v, (int, float))]
        if wrong:
            return f"{key} is a number, never {', '.join(map(str, wrong))}"
    if isinstance(distribution, CategoricalDistribution):
        wrong = [v for v in clause.values if v not in distribution.choices]
        if wrong:
            return f"{key} is one of {', '.join(map(str, distribution.choices))}, never {', '.join(map(str, wrong))}"
    return None


def parse(when, space):
    """{search key: [Condition, ...]} from hydra.sweeper.when ({glob: condition}), checked against the space:
    every glob names search keys, every condition reads keys drawn before them, with values they can take."""
    names = list(space)
    found = {}
    for glob, text in (when or {}).items():
        line = f"hydra.sweeper.when.{glob}={text}"
        try:
            condition = Condition(text)
        except ValueError as err:
            raise UsageError(f"{line}: {err} (a condition is `key op value` joined by and/or; op is one of "
                             f"{', '.join(OPS)} or in [a, b])") from None
        matched = [name for name in names if fnmatch.fnmatchcase(name, str(glob))]
        if not matched:
            raise UsageError(f"{line}: {glob} matches no search key (the search keys: {', '.join(names)})")
        first = min(names.index(name) for name in matched)
        for clause in (c for group in condition.any_of for c in group):
            if clause.key not in space:
                raise UsageError(f"{line}: {clause.key} is not a search key; a condition reads search keys drawn "
                                 f"before the keys it governs ({', '.join(names[:first]) or 'none here'})")
            if names.index(clause.key) >= first:
                raise UsageError(f"{line}: {clause.key} is drawn after (or is) {names[first]}: a condition reads only "
                                 f"keys drawn before the keys it governs (the search space's order)")
            wrong = _check_values(clause.key, clause, space[clause.key])
            if wrong:
                raise UsageError(f"{line}: {wrong}")
        for name in matched:
            found.setdefault(name, []).append(condition)
    return found


def active(conditions, name, drawn):
    """Is `name` drawn, given the values drawn before it?"""
    return all(condition.holds(drawn) for condition in conditions.get(name, ()))
