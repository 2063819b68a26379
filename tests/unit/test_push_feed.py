"""The push feed: every ingress replica hears whose features were pushed, or learns it cannot tell."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.events import push_feed
from serve_app.events.push_feed import Pushed, PushFeed, follow


def test_a_follower_hears_each_push_once_in_order() -> None:
    feed = PushFeed()
    first = feed.since(None)
    assert first.users is None  # a first poll cannot know what it missed: drop every cached row
    feed.record([3, 1])
    feed.record([3, 7])
    news = feed.since(first.cursor)
    assert news.users == (3, 1, 7)  # each user once, in the order first pushed
    assert feed.since(news.cursor).users == ()
    feed.record([9])
    assert feed.since(news.cursor).users == (9,)


def test_a_new_writer_or_a_follower_too_far_behind_cannot_be_told_who() -> None:
    feed = PushFeed(keep=3)
    cursor = feed.since(None).cursor
    feed.record([1, 2])
    assert feed.since(cursor).users == (1, 2)
    feed.record([3, 4, 5])  # 1 and 2 are gone from the feed: a follower at `cursor` missed them
    assert feed.since(cursor).users is None
    restarted = PushFeed()
    restarted.record([4])
    assert restarted.since(feed.since(cursor).cursor).users is None  # another epoch
    assert feed.since((feed.epoch, 99)).users is None  # a cursor from the future is not this feed's


def test_follow_polls_with_the_last_cursor_and_survives_a_failing_writer() -> None:
    feed = PushFeed()
    heard: list[Pushed] = []
    polls: list = []
    failures = iter([True, False, False, False, True, False, False, False, False, False])

    async def poll(cursor):
        polls.append(cursor)
        if next(failures, False):
            raise ConnectionError("the writer is restarting")
        return feed.since(cursor)

    async def main() -> None:
        task = asyncio.create_task(follow(poll, heard.append, interval_s=0.01))
        await asyncio.sleep(0.05)
        feed.record([5])
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert polls[0] is None and polls[1] is None  # the failed first poll is retried from scratch
    assert heard[0].users is None
    assert [p.users for p in heard if p.users] == [(5,)]
    assert all(p.cursor[0] == feed.epoch for p in heard)


def test_recently_pushed_users_are_remembered_for_the_ttl_and_bounded(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(push_feed.time, "monotonic", lambda: now[0])
    pushed = push_feed.RecentlyPushed(ttl_s=30, max_users=3)
    pushed.add([1, 2])
    now[0] += 20
    pushed.add([3])
    assert 1 in pushed and 3 in pushed and 4 not in pushed
    now[0] += 15  # users 1 and 2 are 35 s old now, 3 is 15 s old
    assert 1 not in pushed and 3 in pushed
    pushed.add([4, 5, 6])  # past max_users: the oldest go first
    assert 3 not in pushed and {4, 5, 6} == {u for u in range(10) if u in pushed}
