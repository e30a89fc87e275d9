"""The test fixtures give each test its own, real, empty resources."""

from __future__ import annotations

from urllib.parse import quote

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from conveyor.testing.services import RabbitEndpoint


async def test_mysql_url_is_a_private_empty_database(mysql_url: str) -> None:
    engine = create_async_engine(mysql_url)
    try:
        async with engine.begin() as connection:
            name = (await connection.execute(text("SELECT DATABASE()"))).scalar_one()
            assert mysql_url.endswith("/" + name)
            assert name.startswith("test_")
            tables = (await connection.execute(text("SHOW TABLES"))).all()
            assert tables == []
            await connection.execute(text("CREATE TABLE t (id INT PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO t VALUES (1), (2)"))
            assert (await connection.execute(text("SELECT COUNT(*) FROM t"))).scalar_one() == 2
    finally:
        await engine.dispose()


def test_vhost_is_private_to_the_test(rabbit: RabbitEndpoint, vhost: str) -> None:
    with rabbit.admin() as admin:
        info = admin.get(f"/api/vhosts/{quote(vhost, safe='')}")
        assert info.status_code == 200
        assert admin.get(f"/api/queues/{quote(vhost, safe='')}").json() == []
