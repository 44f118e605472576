"""Guard rails: notice when an agent writes outside its own worktree, and undo it.

One module per job: :mod:`.snapshot` (what a checkout and the refs look like), :mod:`.surface`
(git's own files that run code), :mod:`.integrity` (refs resolve to complete commits),
:mod:`.packfiles` (packs and the multi-pack-index that lie), :mod:`.store_dir` (the object
store's directory moved or replaced, links planted in it), :mod:`.held_files` (the baseline's
object files, held and put back), :mod:`.loose_objects` (loose objects that do not hash to
their name), :mod:`.attribution` (which agents may have done it), :mod:`.restore` (putting it
back), :mod:`.channel` (swarm's own commands naming the refs they move: the guard's side; the
commands' side in :mod:`.ref_moves`; an announcement and its writer checked in
:mod:`.announcements`), :mod:`.changes` (which checkouts may have changed, without running
git), :mod:`.model` (what the guard finds) and :mod:`.watcher` (the guard that ties them
together).

The package imports none of them itself: `swarm status` and the other quick commands read only
:mod:`.model` and :mod:`.remotes`, without the guard's inotify and process machinery.
"""
