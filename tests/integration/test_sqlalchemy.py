"""An SQLAlchemy 1.4 ORM workload (psycopg2) run once directly against
PostgreSQL and once through pgcoalesce in transaction mode: every result
must be the same."""

import threading
import unittest

import harness
from harness import setUpModule, tearDownModule  # noqa: F401 - one PostgreSQL per module

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import declarative_base, joinedload, relationship, selectinload, sessionmaker

Base = declarative_base()


class User(Base):
    __tablename__ = "sa_users"
    id = sa.Column(sa.Integer, primary_key=True)
    name = sa.Column(sa.String(50), nullable=False)
    email = sa.Column(sa.String(100), nullable=False, unique=True)
    posts = relationship("Post", back_populates="author", order_by="Post.id",
                         cascade="all, delete-orphan")


class Post(Base):
    __tablename__ = "sa_posts"
    id = sa.Column(sa.Integer, primary_key=True)
    user_id = sa.Column(sa.Integer, sa.ForeignKey("sa_users.id"), nullable=False, index=True)
    title = sa.Column(sa.String(200), nullable=False)
    body = sa.Column(sa.Text)
    views = sa.Column(sa.Integer, nullable=False, default=0)
    author = relationship("User", back_populates="posts")


class Counter(Base):
    __tablename__ = "sa_counter"
    id = sa.Column(sa.Integer, primary_key=True)
    n = sa.Column(sa.Integer, nullable=False)


def workload(url):
    """Run the workload against url; return everything it observed."""
    engine = sa.create_engine(url, pool_size=5, max_overflow=5, future=True)
    out = []
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        Session = sessionmaker(engine, future=True)

        with Session() as s:
            for i in range(1, 11):
                u = User(name="user%d" % i, email="user%d@example.com" % i)
                u.posts = [Post(title="post %d.%d" % (i, j), body="body " * j, views=i * j)
                           for j in range(1, (i % 4) + 2)]
                s.add(u)
            s.add(Counter(id=1, n=0))
            s.commit()

        with Session() as s:  # lazy loading: one query per user (the N+1 pattern)
            users = s.execute(sa.select(User).order_by(User.id)).scalars().all()
            out.append(("lazy", [(u.id, u.name, [(p.id, p.title, p.views) for p in u.posts])
                                 for u in users]))

        with Session() as s:  # joined eager loading
            users = s.execute(sa.select(User).options(joinedload(User.posts))
                              .order_by(User.id)).unique().scalars().all()
            out.append(("joined", [(u.id, [p.title for p in u.posts]) for u in users]))

        with Session() as s:  # selectin eager loading (an IN list of keys)
            users = s.execute(sa.select(User).options(selectinload(User.posts))
                              .where(User.id > 5).order_by(User.id)).scalars().all()
            out.append(("selectin", [(u.id, len(u.posts)) for u in users]))

        with Session() as s:  # many-to-one lazy loads
            posts = s.execute(sa.select(Post).order_by(Post.id).limit(8)).scalars().all()
            out.append(("authors", [(p.id, p.author.email) for p in posts]))

        with Session() as s:  # update
            u = s.get(User, 3)
            u.name = "renamed"
            s.execute(sa.update(Post).where(Post.user_id == 3).values(views=Post.views + 100))
            s.commit()
            out.append(("updated", s.get(User, 3).name,
                        s.execute(sa.select(sa.func.sum(Post.views))).scalar_one()))

        with Session() as s:  # delete with cascade
            s.delete(s.get(User, 4))
            s.commit()
            out.append(("deleted", s.execute(sa.select(sa.func.count(User.id))).scalar_one(),
                        s.execute(sa.select(sa.func.count(Post.id))).scalar_one()))

        with Session() as s:  # a transaction rolled back
            s.add(User(name="ghost", email="ghost@example.com"))
            s.flush()
            seen_inside = s.execute(sa.select(sa.func.count(User.id))).scalar_one()
            s.rollback()
            out.append(("rolled back", seen_inside,
                        s.execute(sa.select(sa.func.count(User.id))).scalar_one()))

        with Session() as s:  # unique violation caught, session usable afterwards
            s.add(User(name="dup", email="user1@example.com"))
            try:
                s.commit()
                out.append(("integrity", "no error"))
            except sa_exc.IntegrityError as e:
                s.rollback()
                out.append(("integrity", e.orig.pgcode,
                            s.execute(sa.select(User.name).where(User.id == 1)).scalar_one()))

        with Session() as s:  # aggregate over a join
            rows = s.execute(sa.select(User.name, sa.func.count(Post.id))
                             .join(Post, isouter=True).group_by(User.id)
                             .order_by(User.id)).all()
            out.append(("aggregate", [tuple(r) for r in rows]))

        with engine.connect() as c:  # Core text with bound parameters
            rows = c.execute(sa.text("SELECT title FROM sa_posts WHERE views > :v ORDER BY id"),
                             {"v": 100}).all()
            out.append(("core", [r[0] for r in rows]))

        # Concurrent increments under row locks from several threads.
        def bump(_):
            for _ in range(25):
                with Session() as s:
                    row = s.execute(sa.select(Counter).where(Counter.id == 1)
                                    .with_for_update()).scalar_one()
                    row.n += 1
                    s.commit()

        threads = [threading.Thread(target=bump, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with Session() as s:
            out.append(("counter", s.get(Counter, 1).n))

        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()
    return out


class SqlAlchemyTest(harness.ProxyTestCase):
    proxy_settings = {"pool_mode": "transaction", "pool_size": 3, "max_overflow": 2}

    @classmethod
    def setUpClass(cls):
        # The ORM workload runs with the identity-map cache on: its results must still
        # equal the direct run's.
        cls.proxy_settings = dict(cls.proxy_settings, cache_url=harness.redis().url)
        super().setUpClass()

    def url(self, port):
        return "postgresql+psycopg2://app_scram:scram_pw@127.0.0.1:%d/app" % port

    def test_same_results_direct_and_through_proxy(self):
        direct = workload(self.url(self.pg.port))
        self.assertEqual(dict((r[0], r) for r in direct)["counter"], ("counter", 150))
        self.assertEqual(dict((r[0], r) for r in direct)["integrity"][1], "23505")
        proxied = workload(self.url(self.proxy.port))
        self.assertEqual(proxied, direct)


if __name__ == "__main__":
    unittest.main()
