"""N+1 detection (n1_mode = batch, the default, detects as detect does) with the ORMs users run: SQLAlchemy 1.4
lazy loading through psycopg2 (literals inline) and asyncpg (extended
protocol, named statements), hand-written psycopg 3 loops (unnamed and
named statements) and Django 3.2. Each loop must appear in SHOW N1 and GET
/n1 with its parent and child shapes, the key column and key source, and a
run length equal to the number of child statements the client sent (counted
on the client side). Workloads without an N+1 loop must report none, and
the statistics per shape (SHOW QUERIES, /queries) must count what ran."""

import asyncio
import json
import re
import sys
import unittest

import psycopg2

import adminlib
import harness
from adminlib import ADMIN_SETTINGS, ADMIN_USERS, admin_rows
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, declarative_base, relationship

try:
    import asyncpg  # noqa: F401 - the dialect imports it
    from sqlalchemy.ext.asyncio import create_async_engine
except ImportError:  # pragma: no cover - Debian has python3-asyncpg
    create_async_engine = None

NUSERS = 100
NPOSTS = 200
DISTINCT_AUTHORS = 37  # of posts 1..100: user (7k mod 37) + 1


def post_author(k):
    """Author of post k (1-based): posts 1..100 cycle through 37 users in a
    scattered order, posts 101..200 give every user at least one post."""
    return (7 * k) % DISTINCT_AUTHORS + 1 if k <= 100 else k - 100


Base = declarative_base()


class User(Base):
    __tablename__ = "users"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.String(50), nullable=False)
    posts = relationship("Post", back_populates="author", order_by="Post.id")


class Post(Base):
    __tablename__ = "posts"
    id = sa.Column(sa.Integer, primary_key=True)
    user_id = sa.Column(sa.Integer, sa.ForeignKey("users.id"), nullable=False)
    title = sa.Column(sa.String(200), nullable=False)
    author = relationship("User", back_populates="posts")


def create_schema(pg):
    """users and posts, filled directly (not through the proxy)."""
    pg.execute("DROP TABLE IF EXISTS posts, users")
    pg.execute("CREATE TABLE users (id int PRIMARY KEY, name varchar(50) NOT NULL)")
    pg.execute("CREATE TABLE posts (id int PRIMARY KEY, user_id int NOT NULL REFERENCES users, "
               "title varchar(200) NOT NULL)")
    pg.execute("INSERT INTO users SELECT i, 'user ' || i FROM generate_series(1, %d) i" % NUSERS)
    values = ",".join("(%d, %d, 'post %d')" % (k, post_author(k), k)
                      for k in range(1, NPOSTS + 1))
    pg.execute("INSERT INTO posts VALUES " + values)
    pg.execute("GRANT ALL ON users, posts TO PUBLIC")


class ChildCounter:
    """Counts the statements an SQLAlchemy engine sends whose text matches."""

    def __init__(self, engine, pattern):
        self.pattern = re.compile(pattern, re.I | re.S)
        self.count = 0
        event.listen(engine, "before_cursor_execute", self.before)

    def before(self, conn, cursor, statement, parameters, context, executemany):
        if self.pattern.search(statement):
            self.count += 1


def one_to_many(session):
    """100 users, then each user's posts (lazy): one child statement per user."""
    users = session.execute(sa.select(User).order_by(User.id)).scalars().all()
    return sum(len(u.posts) for u in users)


def many_to_one(session):
    """Posts 1..100, then each post's author (lazy): one child statement per
    author not yet in the identity map."""
    posts = session.execute(sa.select(Post).where(Post.id <= 100).order_by(Post.id)) \
        .scalars().all()
    return len({p.author.name for p in posts})


def n1_json(proxy):
    status, headers, body = adminlib.http(proxy.admin_port, "/n1")
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return json.loads(body)


def find_pattern(patterns, child_table, key_column):
    found = [p for p in patterns if ("from %s " % child_table) in p["child_sql"].lower() + " "
             and p["key_column"] == key_column]
    return found


class N1Case(harness.ProxyTestCase):
    proxy_settings = dict(ADMIN_SETTINGS)
    users = ADMIN_USERS

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        create_schema(cls.pg)

    def show_n1(self):
        return admin_rows(self.proxy, "SHOW N1")

    def one_pattern(self, child_table, key_column):
        """The pattern whose child reads child_table by key_column, as SHOW N1
        and /n1 give it (checked to agree)."""
        rows = [r for r in find_pattern(self.show_n1(), child_table, key_column)]
        self.assertEqual(len(rows), 1, self.show_n1())
        doc = n1_json(self.proxy)
        js = find_pattern(doc["patterns"], child_table, key_column)
        self.assertEqual(len(js), 1, doc)
        for k in ("parent_sql", "child_sql", "key_source", "occurrences", "total_run_length",
                  "max_run_length", "child_time_us", "time_per_run_us", "application_name",
                  "user", "database", "fix"):
            self.assertEqual(rows[0][k], js[0][k], k)
        return rows[0], js[0]

    def check_one_to_many(self, row, children, parent_re, child_re):
        self.assertRegex(row["parent_sql"], parent_re)
        self.assertRegex(row["child_sql"], child_re)
        self.assertEqual(row["key_column"], "posts.user_id")
        self.assertEqual(row["key_source"], "users.id")
        self.assertEqual(children, NUSERS)
        self.assertEqual(row["occurrences"], 1)
        self.assertEqual(row["max_run_length"], children)
        self.assertEqual(row["total_run_length"], children)
        self.assertIn("selectinload", row["fix"])
        self.assertIn("posts.user_id = ANY($1)", row["fix"])

    def check_many_to_one(self, row, children, parent_re, child_re):
        self.assertRegex(row["parent_sql"], parent_re)
        self.assertRegex(row["child_sql"], child_re)
        self.assertEqual(row["key_column"], "users.id")
        self.assertEqual(row["key_source"], "posts.user_id")
        self.assertEqual(children, DISTINCT_AUTHORS)
        self.assertEqual(row["occurrences"], 1)
        self.assertEqual(row["max_run_length"], children)
        self.assertEqual(row["total_run_length"], children)
        self.assertIn("users.id = ANY($1)", row["fix"])


class SqlAlchemyPsycopg2Test(N1Case):
    """psycopg2: the simple protocol, every key inline as a literal. One test
    method, because the loops are checked in order: first detection, the
    same loop again, another loop, the reports."""

    def engine(self):
        return sa.create_engine(self.proxy.dsn().replace("postgresql://", "postgresql+psycopg2://")
                                + "?application_name=n1-sa-psycopg2", future=True)

    def run_loop(self, fn, child_re):
        engine = self.engine()
        counter = ChildCounter(engine, child_re)
        with Session(engine) as s:
            result = fn(s)
        engine.dispose()
        return result, counter.count

    def test_lazy_loading_loops(self):
        self.assertEqual(self.show_n1(), [])
        log_at = self.proxy.log_offset()
        total, children = self.run_loop(one_to_many, r"FROM posts\s+WHERE")
        self.assertEqual(total, NPOSTS)
        row, js = self.one_pattern("posts", "posts.user_id")
        self.check_one_to_many(row, children, r"^select users\.id, users\.name from users "
                               r"order by users\.id$",
                               r"^select posts\.id as posts_id, posts\.user_id as posts_user_id, "
                               r"posts\.title as posts_title from posts "
                               r"where \$1 = posts\.user_id order by posts\.id$")
        self.assertEqual(row["application_name"], "n1-sa-psycopg2")
        self.assertEqual(row["user"], harness.DEFAULT_USER)
        self.assertEqual(row["database"], harness.DATABASE)
        self.assertGreater(row["child_time_us"], 0)
        self.assertEqual(row["time_per_run_us"], row["child_time_us"])
        self.assertEqual(row["child_rows"], NPOSTS)
        self.assertTrue(row["first_seen"] and row["last_seen"])
        self.assertRegex(js["first_seen"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        # one log line at the first detection, naming both statements and the fix
        log = self.proxy.log_since(log_at)
        self.assertEqual(log.count("N+1 pattern found"), 1, log)
        self.assertIn("key posts.user_id from users.id", log)
        self.assertIn("from posts where $1 = posts.user_id", log)
        self.assertIn("selectinload()", log)

        # the same loop again: a second occurrence, no second log line
        log_at = self.proxy.log_offset()
        total, children = self.run_loop(one_to_many, r"FROM posts\s+WHERE")
        row, _ = self.one_pattern("posts", "posts.user_id")
        self.assertEqual((row["occurrences"], row["total_run_length"], row["max_run_length"]),
                         (2, 2 * children, children))
        self.assertNotIn("N+1 pattern found", self.proxy.log_since(log_at))

        # many-to-one: only the authors not yet in the identity map are asked for
        distinct, children = self.run_loop(many_to_one, r"FROM users\s+WHERE users\.id =")
        self.assertEqual(distinct, DISTINCT_AUTHORS)
        row, _ = self.one_pattern("users", "users.id")
        self.check_many_to_one(row, children,
                               r"^select posts\.id, posts\.user_id, posts\.title from posts "
                               r"where posts\.id <= \$1 order by posts\.id$",
                               r"^select users\.id as users_id, users\.name as users_name "
                               r"from users where users\.id = \$1$")
        self.assertIn("joinedload", row["fix"])

        # /n1 is sorted by time spent; both views are in SHOW HELP
        doc = n1_json(self.proxy)
        self.assertEqual(doc["n1_mode"], "batch")
        self.assertEqual(len(doc["patterns"]), 2)
        times = [p["child_time_us"] for p in doc["patterns"]]
        self.assertEqual(times, sorted(times, reverse=True))
        self.assertEqual(doc["runs_detected"], 3)
        self.assertEqual(doc["patterns_found"], 2)
        helps = [h["command"] for h in admin_rows(self.proxy, "SHOW HELP")]
        self.assertIn("SHOW N1", helps)
        self.assertIn("SHOW QUERIES", helps)

        # /metrics
        status, _, body = adminlib.http(self.proxy.admin_port, "/metrics")
        self.assertEqual(status, 200)
        text = body.decode()
        checked = adminlib.promtool_check(text)
        if checked is not None:
            self.assertTrue(checked[0], checked[1])
        m = adminlib.parse_prometheus(text)
        self.assertEqual(adminlib.sample(m, "pgcoalesce_n1_runs_total", database=harness.DATABASE,
                                         user=harness.DEFAULT_USER), 3)
        self.assertEqual(adminlib.sample(m, "pgcoalesce_n1_patterns"), 2)
        self.assertEqual(adminlib.sample(m, "pgcoalesce_n1_patterns_found_total"), 2)
        self.assertGreater(adminlib.sample(m, "pgcoalesce_statements_total", shape="known"),
                           2 * NUSERS + DISTINCT_AUTHORS)
        self.assertGreaterEqual(adminlib.sample(m, "pgcoalesce_shape_cache_entries"), 4)
        self.assertGreater(adminlib.sample(m, "pgcoalesce_shape_cache_hits_total"), 2 * NUSERS)

        # SHOW QUERIES has the child with every call the ORM made
        queries = {q["sql"]: q for q in admin_rows(self.proxy, "SHOW QUERIES")}
        child = [q for sql, q in queries.items() if "where $1 = posts.user_id" in sql]
        self.assertEqual(len(child), 1)
        self.assertEqual((child[0]["calls"], child[0]["rows"]), (2 * NUSERS, 2 * NPOSTS))


@unittest.skipIf(create_async_engine is None, "asyncpg is not installed")
class SqlAlchemyAsyncpgTest(N1Case):
    """asyncpg: the extended protocol, named prepared statements (rewritten by
    the proxy in transaction mode), binary parameters and results."""

    def run_loop(self, fn, child_re):
        url = self.proxy.dsn().replace("postgresql://", "postgresql+asyncpg://")

        async def main():
            engine = create_async_engine(url, connect_args={
                "ssl": False, "server_settings": {"application_name": "n1-sa-asyncpg"}})
            counter = ChildCounter(engine.sync_engine, child_re)
            try:
                from sqlalchemy.ext.asyncio import AsyncSession
                async with AsyncSession(engine) as s:
                    result = await s.run_sync(fn)
            finally:
                await engine.dispose()
            return result, counter.count

        return asyncio.run(main())

    def test_one_to_many_lazy_load(self):
        total, children = self.run_loop(one_to_many, r"FROM posts\s+WHERE")
        self.assertEqual(total, NPOSTS)
        row, _ = self.one_pattern("posts", "posts.user_id")
        self.check_one_to_many(row, children, r"^select users\.id, users\.name from users order by "
                               r"users\.id$",
                               r"where \$1::integer = posts\.user_id order by posts\.id$")
        self.assertEqual(row["application_name"], "n1-sa-asyncpg")

    def test_many_to_one_lazy_load(self):
        total, children = self.run_loop(many_to_one, r"FROM users\s+WHERE users\.id =")
        self.assertEqual(total, DISTINCT_AUTHORS)
        row, _ = self.one_pattern("users", "users.id")
        self.check_many_to_one(row, children,
                               r"^select posts\.id, posts\.user_id, posts\.title from posts "
                               r"where posts\.id <= \$1::integer order by posts\.id$",
                               r"from users where users\.id = \$1::integer$")


class Psycopg3Test(N1Case):
    """psycopg 3 by hand: unnamed statements (Parse, Bind, Describe, Execute,
    Sync) and, with prepare_threshold=0, named ones."""

    def loop(self, prepare_threshold, app):
        with self.proxy.connect3(autocommit=True, prepare_threshold=prepare_threshold,
                                 application_name=app) as conn:
            users = conn.execute("SELECT id, name FROM users ORDER BY id").fetchall()
            n = 0
            for uid, _ in users:
                n += 1
                conn.execute("SELECT id, title FROM posts WHERE user_id = %s ORDER BY id",
                             (uid,)).fetchall()
            return n

    def test_unnamed_and_named_statements(self):
        for threshold, app in ((None, "n1-pg3-unnamed"), (0, "n1-pg3-named")):
            with self.subTest(prepare_threshold=threshold):
                children = self.loop(threshold, app)
                rows = find_pattern(self.show_n1(), "posts", "posts.user_id")
                self.assertEqual(len(rows), 1, self.show_n1())
                row = rows[0]
                self.assertEqual(row["parent_sql"], "select id, name from users order by id")
                self.assertEqual(row["child_sql"],
                                 "select id, title from posts where user_id = $1 order by id")
                self.assertEqual(row["key_source"], "users.id")
                self.assertEqual(row["max_run_length"], children)
                self.assertEqual(row["application_name"], app)
        self.assertEqual(row["occurrences"], 2)
        self.assertEqual(row["total_run_length"], 2 * NUSERS)


class SessionModeTest(N1Case):
    """Session pooling: named statements are followed by the client's own names."""

    proxy_settings = dict(ADMIN_SETTINGS, pool_mode="session")

    def test_named_statements_in_session_mode(self):
        with self.proxy.connect3(autocommit=True, prepare_threshold=0) as conn:
            users = conn.execute("SELECT id FROM users ORDER BY id").fetchall()
            for (uid,) in users:
                conn.execute("SELECT title FROM posts WHERE user_id = %s", (uid,)).fetchall()
        rows = find_pattern(self.show_n1(), "posts", "posts.user_id")
        self.assertEqual(len(rows), 1, self.show_n1())
        self.assertEqual(rows[0]["max_run_length"], NUSERS)
        self.assertEqual(rows[0]["key_source"], "users.id")


class NoFalsePositivesTest(N1Case):
    """Workloads that look like loops but are not N+1: none may be reported."""

    def test_no_n1_reported(self):
        conn = self.proxy.connect(autocommit=True)
        cur = conn.cursor()
        # a plain table: a temp table does not survive transaction pooling (pgcoalesce
        # resets the backend after the statement that made it)
        cur.execute("DROP TABLE IF EXISTS log_t")
        cur.execute("CREATE TABLE log_t (user_id int, note text)")
        # executemany inserts keyed by the rows just read (writes are absorbed)
        cur.execute("SELECT id FROM users ORDER BY id")
        ids = [r[0] for r in cur.fetchall()]
        cur.executemany("INSERT INTO log_t (user_id, note) VALUES (%s, %s)",
                        [(i, "seen") for i in ids])
        # per-row updates of the rows just read
        cur.execute("SELECT id FROM users ORDER BY id LIMIT 20")
        for (i,) in cur.fetchall():
            cur.execute("UPDATE log_t SET note = 'again' WHERE user_id = %s", (i,))
        # pagination: LIMIT/OFFSET, then keyset on the previous page
        for offset in range(0, NUSERS, 10):
            cur.execute("SELECT id, name FROM users ORDER BY id LIMIT %s OFFSET %s", (10, offset))
            cur.fetchall()
        last = 0
        while True:
            cur.execute("SELECT id FROM users WHERE id > %s ORDER BY id LIMIT 10", (last,))
            page = cur.fetchall()
            if not page:
                break
            last = page[-1][0]
        # repeated identical queries, alone and after a parent
        for _ in range(20):
            cur.execute("SELECT count(*) FROM posts")
            cur.fetchall()
        cur.execute("SELECT id FROM users ORDER BY id")
        cur.fetchall()
        for _ in range(20):
            cur.execute("SELECT name FROM users WHERE id = 1")
            cur.fetchall()
        conn.close()
        self.assertEqual(self.show_n1(), [])
        self.assertEqual(n1_json(self.proxy)["patterns"], [])
        # ... but the statements were all seen: SHOW QUERIES counts them per shape
        queries = {q["sql"]: q for q in admin_rows(self.proxy, "SHOW QUERIES")}
        ins = queries["insert into log_t (user_id, note) values ($1, $2)"]
        self.assertEqual((ins["calls"], ins["rows"], ins["kind"], ins["read_only"]),
                         (NUSERS, NUSERS, "insert", "no"))
        page = queries["select id, name from users order by id limit $1 offset $2"]
        self.assertEqual((page["calls"], page["rows"], page["read_only"]), (10, NUSERS, "yes"))
        same = queries["select name from users where id = $1"]
        self.assertEqual((same["calls"], same["rows"]), (20, 20))
        self.assertGreaterEqual(same["total_time_us"], same["max_time_us"])
        self.assertGreater(same["total_time_us"], 0)
        status, _, body = adminlib.http(self.proxy.admin_port, "/queries")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        js = {q["sql"]: q for q in doc["queries"]}
        self.assertEqual(js["select count(*) from posts"]["calls"], 20)
        self.assertEqual(js["select count(*) from posts"]["rows"], 20)
        totals = [q["total_time_us"] for q in doc["queries"]]
        self.assertEqual(totals, sorted(totals, reverse=True))
        self.assertGreaterEqual(doc["shape_cache"]["entries"], 6)

    def test_unknown_statements_pass_through(self):
        """Several statements in one Query, a Query over 64 KiB and a Bind over
        64 KiB are statements of unknown shape: counted, answered as usual."""
        def unknown_calls():
            status, _, body = adminlib.http(self.proxy.admin_port, "/queries")
            return json.loads(body)["unknown"]["calls"]
        before, patterns = unknown_calls(), n1_json(self.proxy)["patterns"]
        big = "x" * 100000
        conn = self.proxy.connect(autocommit=True)
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2")
        self.assertEqual(cur.fetchall(), [(2,)])
        cur.execute("SELECT length(%s)", (big,))
        self.assertEqual(cur.fetchall(), [(len(big),)])
        conn.close()
        with self.proxy.connect3(autocommit=True) as c3:
            self.assertEqual(c3.execute("SELECT length(%s::text)", (big,)).fetchone(),
                             (len(big),))
        self.assertEqual(unknown_calls(), before + 3)
        self.assertEqual(n1_json(self.proxy)["patterns"], patterns)

    def test_pipelined_statements_keep_their_order(self):
        """psycopg 3 pipeline mode: many statements in flight at once; each is
        counted once and the answers are the client's."""
        with self.proxy.connect3(autocommit=True) as c3:
            c3.execute("DROP TABLE IF EXISTS pipe_t")
            c3.execute("CREATE TABLE pipe_t (i int)")
            with c3.pipeline():
                c3.cursor().executemany("INSERT INTO pipe_t VALUES (%s)",
                                        [(i,) for i in range(60)])
                curs = [c3.execute("SELECT i FROM pipe_t WHERE i = %s", (i,)) for i in range(30)]
            self.assertEqual([cur.fetchall() for cur in curs], [[(i,)] for i in range(30)])
        queries = {q["sql"]: q for q in admin_rows(self.proxy, "SHOW QUERIES")}
        self.assertEqual(queries["insert into pipe_t values ($1)"]["calls"], 60)
        sel = queries["select i from pipe_t where i = $1"]
        self.assertEqual((sel["calls"], sel["rows"]), (30, 30))


class OffModeTest(N1Case):
    """n1_mode = off: nothing is shaped, nothing reported; a reload turns it on."""

    proxy_settings = dict(ADMIN_SETTINGS, n1_mode="off")

    def loop(self):
        conn = self.proxy.connect(autocommit=True)
        cur = conn.cursor()
        cur.execute("SELECT id FROM users ORDER BY id")
        for (i,) in cur.fetchall():
            cur.execute("SELECT title FROM posts WHERE user_id = %s", (i,))
            cur.fetchall()
        conn.close()

    def test_off_then_reload_on(self):
        self.loop()
        self.assertEqual(self.show_n1(), [])
        self.assertEqual(admin_rows(self.proxy, "SHOW QUERIES"), [])
        self.assertEqual(n1_json(self.proxy)["n1_mode"], "off")
        self.proxy.settings["n1_mode"] = "detect"
        self.proxy.settings["n1_threshold"] = 3
        self.proxy.write_config()
        self.assertEqual(adminlib.admin_command(self.proxy, "RELOAD"), "RELOAD")
        self.loop()
        rows = find_pattern(self.show_n1(), "posts", "posts.user_id")
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["max_run_length"], NUSERS)
        self.assertEqual(n1_json(self.proxy)["n1_threshold"], 3)


class DjangoTest(N1Case):
    """Django 3.2 with psycopg2: lazy foreign keys and reverse relations."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import django
        from django.conf import settings
        if not settings.configured:
            settings.configure(
                DATABASES={"default": {
                    "ENGINE": "django.db.backends.postgresql", "NAME": harness.DATABASE,
                    "USER": harness.DEFAULT_USER, "PASSWORD": harness.USERS[harness.DEFAULT_USER],
                    "HOST": "127.0.0.1", "PORT": str(cls.proxy.port),
                    "OPTIONS": {"application_name": "n1-django"}}},
                INSTALLED_APPS=["n1djangoapp"], USE_TZ=True,
                DEFAULT_AUTO_FIELD="django.db.models.AutoField")
            django.setup()
        from django.db import connection
        from n1djangoapp.models import Author, Book
        cls.pg.execute("DROP TABLE IF EXISTS n1djangoapp_book, n1djangoapp_author")
        with connection.schema_editor() as editor:
            editor.create_model(Author)
            editor.create_model(Book)
        Author.objects.bulk_create([Author(id=i, name="author %d" % i)
                                    for i in range(1, NUSERS + 1)])
        Book.objects.bulk_create([Book(id=k, author_id=post_author(k), title="book %d" % k)
                                  for k in range(1, NPOSTS + 1)])
        connection.close()

    def capture(self, fn):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        with CaptureQueriesContext(connection) as ctx:
            result = fn()
        connection.close()
        return result, [q["sql"] for q in ctx.captured_queries]

    def test_reverse_relation_loop(self):
        from n1djangoapp.models import Author

        def loop():
            return sum(len(a.book_set.all()) for a in Author.objects.order_by("id"))
        total, sqls = self.capture(loop)
        self.assertEqual(total, NPOSTS)
        children = len([q for q in sqls if re.search(r'FROM "n1djangoapp_book" WHERE', q)])
        self.assertEqual(children, NUSERS)
        rows = find_pattern(self.show_n1(), '"n1djangoapp_book"', "n1djangoapp_book.author_id")
        self.assertEqual(len(rows), 1, self.show_n1())
        row = rows[0]
        self.assertRegex(row["parent_sql"], r'from "n1djangoapp_author" order by '
                                            r'"n1djangoapp_author"\."id" asc$')
        self.assertRegex(row["child_sql"], r'where "n1djangoapp_book"\."author_id" = \$1$')
        self.assertEqual(row["key_source"], "n1djangoapp_author.id")
        self.assertEqual(row["max_run_length"], children)
        self.assertEqual(row["total_run_length"], children)
        self.assertEqual(row["application_name"], "n1-django")
        self.assertIn("prefetch_related", row["fix"])

    def test_foreign_key_loop(self):
        from n1djangoapp.models import Book

        def loop():
            return len({b.author.name for b in Book.objects.filter(id__lte=100).order_by("id")})
        distinct, sqls = self.capture(loop)
        self.assertEqual(distinct, DISTINCT_AUTHORS)
        # Django has no identity map: one query per book, repeated authors included
        children = len([q for q in sqls if re.search(r'FROM "n1djangoapp_author" WHERE', q)])
        self.assertEqual(children, 100)
        rows = find_pattern(self.show_n1(), '"n1djangoapp_author"', "n1djangoapp_author.id")
        self.assertEqual(len(rows), 1, self.show_n1())
        row = rows[0]
        self.assertRegex(row["parent_sql"], r'from "n1djangoapp_book" where '
                                            r'"n1djangoapp_book"\."id" <= \$1 order by')
        self.assertEqual(row["key_source"], "n1djangoapp_book.author_id")
        self.assertEqual(row["max_run_length"], children)
        self.assertIn("select_related", row["fix"])


if __name__ == "__main__":
    unittest.main()
