"""The documentation where users look agrees with the code: the settings table
in gateway/config_file.c (names, types, ranges, defaults, what SIGHUP applies),
the reference configuration etc/tandem.conf and the manual page tandem.conf(5)
list the same settings with the same defaults; README.md stays short."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import check, run  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TABLE = os.path.join(ROOT, "gateway", "config_file.c")
CONF = os.path.join(ROOT, "etc", "tandem.conf")
MANUAL = os.path.join(ROOT, "doc", "tandem.conf.5")
README = os.path.join(ROOT, "README.md")
UNIT = os.path.join(ROOT, "deploy", "tandem.service")
INSTALL = os.path.join(ROOT, "deploy", "meson.build")
README_MAX_LINES = 200


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def c_fields(entry):
    """The comma-separated fields of one table entry, outside strings and parentheses."""
    fields, cur, depth, quoted = [], "", 0, False
    for i, ch in enumerate(entry):
        if quoted:
            cur += ch
            if ch == '"' and entry[i - 1] != "\\":
                quoted = False
        elif ch == '"':
            quoted, cur = True, cur + ch
        elif ch == "(":
            depth, cur = depth + 1, cur + ch
        elif ch == ")":
            depth, cur = depth - 1, cur + ch
        elif ch == "," and depth == 0:
            fields.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        fields.append(cur.strip())
    return fields


def parse_table(text):
    """{name: setting} from the schema[] table of gateway/config_file.c; groups as type 'group'."""
    m = re.search(r"static const struct setting schema\[\] = \{(.*?)\n\};", text, re.S)
    check(m, "gateway/config_file.c: no schema[] table")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    out = {}
    for entry in re.findall(r'\{((?:[^{}"]|"(?:[^"\\]|\\.)*")*)\}', body):
        f = c_fields(entry)
        check(len(f) == 8, "gateway/config_file.c: an entry with %d fields: %s" % (len(f), entry))
        name = f[0].strip('"')
        kind = {"S_GROUP": "group", "S_STR": "string", "S_PATH": "path", "S_INT": "integer",
                "S_BOOL": "boolean", "S_ENUM": "enum"}[f[1]]
        s = {"type": kind, "reloadable": f[7] == "true"}
        if kind != "group":
            d = f[5].strip('"')
            s["default"] = d if kind in ("integer", "boolean") else '"%s"' % d
        if kind == "integer":
            s["range"] = (int(f[3]), int(f[4]))
        if kind == "enum":
            s["values"] = f[6].strip('"').split("|")
        out[name] = s
    return out


def conf_tokens(text):
    token = re.compile(r'\s+|#[^\n]*|//[^\n]*|/\*.*?\*/|"(?:[^"\\]|\\.)*"|[A-Za-z_][\w-]*|'
                       r'[-+]?[0-9][0-9A-Fa-fxL.]*|[={}();,:\[\]]', re.S)
    pos = 0
    while pos < len(text):
        m = token.match(text, pos)
        check(m, "etc/tandem.conf: cannot read at %r" % text[pos:pos + 20])
        pos = m.end()
        t = m.group(0)
        if not (t.isspace() or t.startswith("#") or t.startswith("//") or t.startswith("/*")):
            yield t


def parse_conf(text):
    """{name: default literal} of every setting in a libconfig file, groups as None;
    lists (the mappings) are skipped."""
    out, path, toks = {}, [], list(conf_tokens(text))
    i = 0
    while i < len(toks):
        t = toks[i]
        if t == "}":
            path.pop()
            i += 1
            if i < len(toks) and toks[i] in ";,":
                i += 1
            continue
        check(i + 2 < len(toks) and toks[i + 1] in ("=", ":"), "etc/tandem.conf: unexpected %r" % t)
        name = ".".join(path + [t])
        v = toks[i + 2]
        if v == "{":
            out[name] = None
            path.append(t)
            i += 3
            continue
        if v in ("(", "["):
            depth, i = 1, i + 3
            while depth:
                depth += toks[i] in "([{"
                depth -= toks[i] in ")]}"
                i += 1
        else:
            out[name] = v.lower() if v.lower() in ("true", "false") else v
            i += 3
        if i < len(toks) and toks[i] in ";,":
            i += 1
    check(not path, "etc/tandem.conf: a group is not closed")
    return out


def unroff(s):
    for a, b in (("\\(dq", '"'), ("\\-", "-"), ("\\(en", "-"), ("\\&", ""), ("\\e", "\\")):
        s = s.replace(a, b)
    return s


TYPE_LINE = re.compile(r'^\.I "(String|Path|Boolean|Integer, (-?\d+) to (-?\d+)|'
                       r'One of ([a-z, ]+)); (SIGHUP applies it|applied at restart)\."$')


def parse_manual(text):
    """{name: setting} from tandem.conf(5): a .TP whose tag is ".B NAME = DEFAULT" and whose
    next line is ".I "TYPE; SIGHUP applies it." or "...; applied at restart."."""
    out = {}
    lines = text.split("\n")
    for n, line in enumerate(lines):
        m = re.match(r"^\.B ([a-z_]+(?:\.[a-z_]+)+) = (.*)$", line)
        if not m:
            continue
        name = m.group(1)
        check(n > 0 and lines[n - 1] == ".TP", "tandem.conf(5): %s is not a .TP tag" % name)
        check(name not in out, "tandem.conf(5): %s is described twice" % name)
        nxt = lines[n + 1] if n + 1 < len(lines) else ""
        t = TYPE_LINE.match(nxt)
        check(t, "tandem.conf(5): %s: the line after its tag does not give its type and reload "
              "(%r)" % (name, nxt))
        s = {"default": unroff(m.group(2)).strip(), "reloadable": t.group(5) == "SIGHUP applies it"}
        kind = t.group(1)
        if kind.startswith("Integer"):
            s["type"], s["range"] = "integer", (int(t.group(2)), int(t.group(3)))
        elif kind.startswith("One of"):
            s["type"], s["values"] = "enum", [v.strip() for v in t.group(4).split(",")]
        else:
            s["type"] = kind.lower()
        out[name] = s
    return out


def differences(table, conf, manual):
    """Every way in which the three disagree, one line each."""
    diffs = []
    settings = {n: s for n, s in table.items() if s["type"] != "group"}
    groups = {n for n, s in table.items() if s["type"] == "group"}
    conf_settings = {n: v for n, v in conf.items() if v is not None}
    conf_groups = {n for n, v in conf.items() if v is None}
    for where, names in (("etc/tandem.conf", conf_settings), ("tandem.conf(5)", manual)):
        for n in sorted(set(settings) - set(names)):
            diffs.append("%s lacks %s" % (where, n))
        for n in sorted(set(names) - set(settings)):
            diffs.append("%s has %s, which the settings table has not" % (where, n))
    for n in sorted(groups ^ conf_groups):
        diffs.append("group %s is in only one of the settings table and etc/tandem.conf" % n)
    for n, s in sorted(settings.items()):
        if n in conf_settings and conf_settings[n] != s["default"]:
            diffs.append("%s: default %s in the settings table, %s in etc/tandem.conf"
                         % (n, s["default"], conf_settings[n]))
        if n not in manual:
            continue
        m = manual[n]
        if m["default"] != s["default"]:
            diffs.append("%s: default %s in the settings table, %s in tandem.conf(5)"
                         % (n, s["default"], m["default"]))
        if m["type"] != s["type"]:
            diffs.append("%s: %s in the settings table, %s in tandem.conf(5)"
                         % (n, s["type"], m["type"]))
        for key in ("range", "values"):
            if key in s and m.get(key) != s[key]:
                diffs.append("%s: %s %s in the settings table, %s in tandem.conf(5)"
                             % (n, key, s[key], m.get(key)))
        if m["reloadable"] != s["reloadable"]:
            diffs.append("%s: %s in the settings table, %s in tandem.conf(5)"
                         % (n, "reloadable" if s["reloadable"] else "restart only",
                            "reloadable" if m["reloadable"] else "restart only"))
    return diffs


def sources():
    return read(TABLE), read(CONF), read(MANUAL)


def compare(table_text, conf_text, manual_text):
    return differences(parse_table(table_text), parse_conf(conf_text), parse_manual(manual_text))


def settings_table_conf_and_manual_agree():
    table_text, conf_text, manual_text = sources()
    table = parse_table(table_text)
    check(len(table) > 40 and "coap.dtls.port" in table, "the settings table was not read whole")
    diffs = compare(table_text, conf_text, manual_text)
    check(not diffs, "the settings table, etc/tandem.conf and tandem.conf(5) disagree:\n  "
          + "\n  ".join(diffs))


def edit(text, old, new):
    check(old in text, "the drift check cannot find %r to change" % old)
    return text.replace(old, new, 1)


def manual_check_catches_drift():
    """Each of the three sources gaining, losing or changing a setting is reported, naming it."""
    table_text, conf_text, manual_text = sources()
    check(not compare(table_text, conf_text, manual_text), "the sources disagree already")
    sessions = re.search(r'\{ "coap\.max_sessions",[^}]*\}', table_text).group(0)
    resources = re.search(r'\{ "coap\.max_resources",[^}]*\},?', table_text).group(0)
    man_resources = re.search(r"\.TP\n\.B coap\.max_resources = .*?(?=\n\.TP\n)", manual_text,
                              re.S).group(0)
    man_sessions_type = '.I "Integer, 1 to 1000000; SIGHUP applies it."'
    cases = {
        "table gains": ((edit(table_text, sessions, sessions + ',\n    { "coap.extra", S_INT, '
                              'OFF(coap.port), 1, 2, "1", NULL, false }'), conf_text, manual_text),
                        "coap.extra"),
        "table loses": ((edit(table_text, resources, ""), conf_text, manual_text),
                        "coap.max_resources"),
        "table changes a default": ((edit(table_text, sessions,
                                          sessions.replace('"10000"', '"9999"')),
                                     conf_text, manual_text), "coap.max_sessions"),
        "table changes a range": ((edit(table_text, sessions,
                                        sessions.replace("1, 1000000", "1, 999999")),
                                   conf_text, manual_text), "coap.max_sessions"),
        "table changes reload": ((edit(table_text, sessions, sessions.replace("true", "false")),
                                  conf_text, manual_text), "coap.max_sessions"),
        "conf gains": ((table_text, edit(conf_text, "coap = {\n", "coap = {\n  extra = 1;\n"),
                        manual_text), "coap.extra"),
        "conf loses": ((table_text, re.sub(r"\n  max_resources = 100000;[^\n]*", "", conf_text),
                        manual_text), "coap.max_resources"),
        "conf changes a default": ((table_text, edit(conf_text, "max_sessions = 10000;",
                                                     "max_sessions = 9999;"), manual_text),
                                   "coap.max_sessions"),
        "manual gains": ((table_text, conf_text,
                          edit(manual_text, man_resources, man_resources +
                               '\n.TP\n.B coap.extra = 1\n.I "Integer, 1 to 2; applied at '
                               'restart."\nExtra.')), "coap.extra"),
        "manual loses": ((table_text, conf_text, edit(manual_text, man_resources + "\n", "")),
                         "coap.max_resources"),
        "manual changes a default": ((table_text, conf_text,
                                      edit(manual_text, ".B coap.max_sessions = 10000",
                                           ".B coap.max_sessions = 9999")), "coap.max_sessions"),
        "manual changes a range": ((table_text, conf_text,
                                    edit(manual_text, man_sessions_type,
                                         man_sessions_type.replace("1000000", "100000"))),
                                   "coap.max_sessions"),
        "manual changes reload": ((table_text, conf_text,
                                   edit(manual_text, man_sessions_type,
                                        man_sessions_type.replace("SIGHUP applies it",
                                                                  "applied at restart"))),
                                  "coap.max_sessions"),
    }
    for what, (texts, name) in cases.items():
        diffs = compare(*texts)
        check(diffs, "%s: not noticed" % what)
        check(any(name in d for d in diffs), "%s: reported without naming %s: %s"
              % (what, name, diffs))


def readme_is_short():
    """README.md stays a front page: at most 200 lines, its links lead somewhere, and it
    points at every part of the documentation."""
    text = read(README)
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    check(lines <= README_MAX_LINES, "README.md has %d lines, more than %d: move the details to "
          "doc/" % (lines, README_MAX_LINES))
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if not re.match(r"https?:", target):
            check(os.path.exists(os.path.join(ROOT, target)), "README.md links to %s, which is "
                  "not in the repository" % target)
    for doc in ("doc/tandem.8", "doc/tandem.conf.5", "doc/operating.md", "doc/devices.md",
                "doc/engineering.md"):
        check("(%s)" % doc in text, "README.md does not point at %s" % doc)
    check("bash scripts/demo.sh " in text and "bash scripts/test.sh " in text,
          "README.md lost the quick start's commands")


def unit_names_the_manual():
    """The unit's Documentation= names the manual pages and a guide that the build
    installs."""
    unit = read(UNIT)
    docs = " ".join(re.findall(r"^Documentation=(.*)$", unit, re.M)).split()
    check("man:tandem(8)" in docs and "man:tandem.conf(5)" in docs,
          "deploy/tandem.service: Documentation= lacks the manual pages: %s" % docs)
    install = read(INSTALL)
    for uri in docs:
        if uri.startswith("man:"):
            page = re.match(r"man:([\w.]+)\((\d)\)$", uri)
            check(page, "deploy/tandem.service: %s is not man:PAGE(SECTION)" % uri)
            name = "%s.%s" % page.groups()
        else:
            check(uri.startswith("file:/usr/share/doc/tandem/"), "unexpected %s" % uri)
            name = os.path.basename(uri)
        check(os.path.exists(os.path.join(ROOT, "doc", name)), "%s: no doc/%s" % (uri, name))
        check("'../doc/%s'" % name in install, "%s: deploy/meson.build does not install "
              "doc/%s" % (uri, name))


if __name__ == "__main__":
    run({f.__name__: f for f in [settings_table_conf_and_manual_agree, manual_check_catches_drift,
                                  readme_is_short, unit_names_the_manual]})
