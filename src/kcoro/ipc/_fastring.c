/* kcoro.ipc._fastring: the small-message fast path of cross-process channels, in C.
 *
 * Optional (built by setup.py like kcoro._speedups; not used when it is missing or KCORO_PURE
 * is set).  It mirrors, branch for branch, the Python reference in _ring.py / _waiting.py for
 * the common cases only, and hands every other case back untouched (returns SLOW) so that the
 * semantics live in one place:
 *
 *   send(data)     append an inline entry (a pickle of <= INLINE_MAX bytes) to a buffered,
 *                  SUSPEND channel with room; ring the armed receivers.  SLOW otherwise
 *                  (full / rendezvous: an offer is needed; closed; drop policies).
 *   recv(timeout)  take the inline entry at the head (settling the offer window, ringing armed
 *                  senders), or wait for one as the endpoint's *leader* thread: spin on the
 *                  change counter (scored: see below), then arm the slot's direct doorbell in
 *                  the same locked section that found the ring empty, sleep in poll() without
 *                  the GIL, drain the bell, clear its pending flag, retry.  SLOW when the head
 *                  is not inline (blocks, payloads, malformed), when the channel is closed and
 *                  empty, or when another thread is the leader; TIMEOUT on timeout.  Nothing is
 *                  left armed when it returns.
 *
 * The lock is the channel lock of the Python code, taken the same way: the process-local RLock
 * of the region's ArenaLock (non-blocking: a thread of ours inside a Python section sends us to
 * the slow path; a nested call does too), then flock(LOCK_EX) on this process's open file
 * description (LOCK_NB first; blocking without the GIL if another process holds it), then the
 * dirty marker (a set marker means a process died inside a section: we let go and have the
 * Python code repair it, then retry).  Inside a section no Python code runs (no allocation, no
 * call), so a finalizer cannot re-enter the lock.  Bells are rung after the lock is released.
 *
 * Spin scoring: spinning pays only when the partner runs at the same time on another CPU; a
 * spin that saw nothing makes the next 2^k - 1 waits sleep at once (k <= 8, reset by a success).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* layout (checked against kcoro.ipc._region at import: LAYOUT) */
#define HDR 4096
#define MAXPROC 32
#define SLOT_BYTES 1024
#define NCELL 64
#define ENTRY 256
#define INLINE_MAX (ENTRY - 48)
#define E_INLINE 1
#define NOCELL 0xFFFF
#define DIRECT 0x100
#define F_CLOSED 1
#define S_LIVE 1
#define CELL_PENDING 1
#define CELL_ACCEPTED 2
#define CELL_TAKEN 3
/* header: u64 index / u32 index */
#define H64_HEAD 5
#define H64_TAIL 6
#define H64_SEQ 17
#define H32_FLAGS 14
#define H32_DIRTY 18
#define H32_ARMR 32
#define H32_ARMS 33
#define H_CNT 512
/* process-table entry, u32 index */
#define P_STATE 0
#define P_ARMR 4
#define P_ARMS 5
#define P_BELL 6
#define P_ARMDR 8
#define P_ARMDS 9
#define P_BELLD 10
#define P_CELLS 16

enum { ST_OK = 0, ST_SLOW = 1, ST_EMPTY = 2, ST_BUSY = 3 };

static PyObject *SLOW, *TIMEOUT;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    char *base;
    int ofd, dbell, sfd, slot;
    uint64_t ring_off, ring_n, cap;
    uint32_t drop;
    int c_sends, c_recvs, c_first, c_last, c_peak;
    PyObject *acq, *rel;         /* the process-local RLock's bound acquire / release */
    PyObject *alock;             /* the ArenaLock (its _depth tells a nested section) */
    PyObject *lacq, *lrel;       /* the leader lock's bound acquire / release */
    PyObject *on_wake, *heal;
    char uuidhex[33];
    int64_t spin_ns;
    int spin_fails, spin_skip;
    int last_slot;
} FastRing;

static PyObject *s_depth;

static inline volatile uint64_t *H64(FastRing *f) { return (volatile uint64_t *)f->base; }
static inline volatile uint32_t *H32(FastRing *f) { return (volatile uint32_t *)f->base; }
static inline volatile uint32_t *P32(FastRing *f) { return (volatile uint32_t *)(f->base + HDR); }
static inline volatile uint64_t *C64(FastRing *f) { return (volatile uint64_t *)(f->base + H_CNT); }

static inline int64_t
now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- the lock ------------------------------------------------------------------------------- */

/* 0: locked; ST_BUSY: another thread of this process (or an outer section of this one) holds
 * the process lock; -1: error (exception set). */
static int
fr_lock(FastRing *f)
{
    for (;;) {
        PyObject *r = PyObject_CallOneArg(f->acq, Py_False);
        if (r == NULL)
            return -1;
        int got = (r == Py_True);
        Py_DECREF(r);
        if (!got)
            return ST_BUSY;
        PyObject *d = PyObject_GetAttr(f->alock, s_depth);
        if (d == NULL)
            goto fail_release;
        long depth = PyLong_AsLong(d);
        Py_DECREF(d);
        if (depth == -1 && PyErr_Occurred())
            goto fail_release;
        if (depth != 0) { /* our thread is inside a Python section: re-entered */
            r = PyObject_CallNoArgs(f->rel);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
            return ST_BUSY;
        }
        if (flock(f->ofd, LOCK_EX | LOCK_NB) != 0) {
            int rc, err;
            if (errno != EWOULDBLOCK && errno != EINTR) {
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail_release;
            }
            do {
                Py_BEGIN_ALLOW_THREADS
                rc = flock(f->ofd, LOCK_EX);
                err = errno;
                Py_END_ALLOW_THREADS
                if (rc != 0 && err == EINTR && PyErr_CheckSignals() < 0)
                    goto fail_release;
            } while (rc != 0 && err == EINTR);
            if (rc != 0) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail_release;
            }
        }
        volatile uint32_t *h32 = H32(f);
        if (h32[H32_DIRTY] == 0) {
            h32[H32_DIRTY] = (uint32_t)f->slot + 1;
            return 0;
        }
        /* a process died inside a section: let the Python code repair it, then retry */
        flock(f->ofd, LOCK_UN);
        r = PyObject_CallNoArgs(f->rel);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        r = PyObject_CallNoArgs(f->heal);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
fail_release:
    {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyObject *r = PyObject_CallNoArgs(f->rel);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    return -1;
}

static int
fr_unlock(FastRing *f)
{
    __atomic_store_n((uint64_t *)&H64(f)[H64_SEQ], H64(f)[H64_SEQ] + 1, __ATOMIC_RELEASE);
    H32(f)[H32_DIRTY] = 0;
    flock(f->ofd, LOCK_UN);
    PyObject *r = PyObject_CallNoArgs(f->rel);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- doorbells -------------------------------------------------------------------------------- */

typedef struct {
    int n;
    int s[2 * MAXPROC + 4];
} Bells;

static inline void
want_ring(FastRing *f, unsigned s, Bells *out)
{
    volatile uint32_t *p = P32(f) + s * (SLOT_BYTES / 4);
    if ((p[P_ARMR] || p[P_ARMS]) && !p[P_BELL] && out->n < (int)(sizeof out->s / sizeof(int))) {
        p[P_BELL] = 1;
        out->s[out->n++] = (int)s;
    }
    if ((p[P_ARMDR] || p[P_ARMDS]) && !p[P_BELLD] && out->n < (int)(sizeof out->s / sizeof(int))) {
        p[P_BELLD] = 1;
        out->s[out->n++] = (int)s | DIRECT;
    }
}

static void
armed_slots(FastRing *f, int recv, int send, Bells *out)
{
    for (unsigned s = 0; s < MAXPROC; s++) {
        volatile uint32_t *p = P32(f) + s * (SLOT_BYTES / 4);
        if (p[P_STATE] != S_LIVE)
            continue;
        if (((recv && p[P_ARMR]) || (send && p[P_ARMS])) && !p[P_BELL]) {
            p[P_BELL] = 1;
            out->s[out->n++] = (int)s;
        }
        if (((recv && p[P_ARMDR]) || (send && p[P_ARMDS])) && !p[P_BELLD]) {
            p[P_BELLD] = 1;
            out->s[out->n++] = (int)s | DIRECT;
        }
    }
}

/* Outside the lock.  Our own slot's I/O bell: wake local waiters (Python); others: one
 * non-blocking datagram to the slot's abstract socket (a full queue means one is pending). */
static int
ring(FastRing *f, Bells *b)
{
    int rc = 0;
    for (int i = 0; i < b->n; i++) {
        int s = b->s[i] & ~DIRECT, direct = b->s[i] & DIRECT;
        if (!direct && s == f->slot) {
            P32(f)[s * (SLOT_BYTES / 4) + P_BELL] = 0;
            PyObject *r = PyObject_CallNoArgs(f->on_wake);
            if (r == NULL) /* a bug in a waker: report it, never lose the operation's result */
                PyErr_WriteUnraisable(f->on_wake);
            else
                Py_DECREF(r);
            continue;
        }
        uint64_t nonce;
        memcpy(&nonce, f->base + HDR + (size_t)s * SLOT_BYTES + 8, 8);
        struct sockaddr_un a;
        memset(&a, 0, sizeof a);
        a.sun_family = AF_UNIX;
        int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "kcoro-%s-%d-%llx%s",
                         f->uuidhex, s, (unsigned long long)nonce, direct ? "-d" : "");
        if (n <= 0 || n >= (int)sizeof a.sun_path - 1)
            continue;
        (void)sendto(f->sfd, "\1", 1, MSG_DONTWAIT, (struct sockaddr *)&a,
                     (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n));
    }
    return rc;
}

/* ---- the locked attempts (lock held, no Python) ----------------------------------------------- */

static inline char *
entry(FastRing *f, uint64_t pos)
{
    return f->base + f->ring_off + (pos % f->ring_n) * ENTRY;
}

static inline volatile uint32_t *
cell(FastRing *f, unsigned s, unsigned c)
{
    return P32(f) + s * (SLOT_BYTES / 4) + P_CELLS + c;
}

static void
count_op(FastRing *f, int which)
{
    volatile uint64_t *c64 = C64(f);
    uint64_t now = (uint64_t)now_ns();
    c64[which] += 1;
    if (which == f->c_sends && !c64[f->c_first])
        c64[f->c_first] = now;
    c64[f->c_last] = now;
}

static int
send_locked(FastRing *f, const char *data, Py_ssize_t n, Bells *bells)
{
    volatile uint64_t *h64 = H64(f);
    if (H32(f)[H32_FLAGS] & F_CLOSED || f->drop || !f->cap)
        return ST_SLOW;
    uint64_t head = h64[H64_HEAD], tail = h64[H64_TAIL];
    if (tail - head >= f->cap)
        return ST_SLOW; /* full: an offer (Python) */
    char *e = entry(f, tail);
    uint8_t hdr[48];
    memset(hdr, 0, sizeof hdr);
    uint16_t c = NOCELL, sl = (uint16_t)f->slot;
    uint32_t len = (uint32_t)n;
    uint64_t nb = (uint64_t)n;
    hdr[0] = E_INLINE;
    memcpy(hdr + 2, &c, 2);
    memcpy(hdr + 4, &sl, 2);
    memcpy(hdr + 8, &len, 4);
    memcpy(hdr + 20, &nb, 8);
    memcpy(e, hdr, 44);
    memcpy(e + 48, data, (size_t)n);
    h64[H64_TAIL] = tail + 1; /* publish: the tail store comes last */
    volatile uint64_t *c64 = C64(f);
    if (tail + 1 - head > c64[f->c_peak])
        c64[f->c_peak] = tail + 1 - head;
    count_op(f, f->c_sends);
    if (H32(f)[H32_ARMR])
        armed_slots(f, 1, 0, bells);
    return ST_OK;
}

static inline void
arm_recv(FastRing *f, int d)
{
    P32(f)[f->slot * (SLOT_BYTES / 4) + P_ARMDR] += (uint32_t)d;
    H32(f)[H32_ARMR] += (uint32_t)d;
}

/* take the inline entry at the head into buf (ST_OK), or ST_EMPTY (armed if ``arm``), or
 * ST_SLOW (the head needs the Python path; closed and empty) */
static int
recv_locked(FastRing *f, char *buf, Py_ssize_t *len, int arm, int *armed, Bells *bells)
{
    volatile uint64_t *h64 = H64(f);
    if (*armed) {
        arm_recv(f, -1);
        *armed = 0;
    }
    uint64_t head = h64[H64_HEAD], tail = h64[H64_TAIL];
    if (tail > head) {
        char *e = entry(f, head);
        uint16_t c, s;
        uint32_t length;
        memcpy(&c, e + 2, 2);
        memcpy(&s, e + 4, 2);
        memcpy(&length, e + 8, 4);
        if ((uint8_t)e[0] != E_INLINE || length > INLINE_MAX
            || (c != NOCELL && (c >= NCELL || s >= MAXPROC)))
            return ST_SLOW;
        memcpy(buf, e + 48, length);
        *len = length;
        f->last_slot = s;
        h64[H64_HEAD] = ++head;
        if (c != NOCELL && *cell(f, s, c) == CELL_PENDING) {
            *cell(f, s, c) = CELL_TAKEN;
            want_ring(f, s, bells);
        }
        if (f->cap) { /* settle the window: the offer that entered the buffer is ACCEPTED */
            uint64_t p = head + f->cap - 1;
            if (p < tail) {
                char *o = entry(f, p);
                uint16_t oc, os;
                memcpy(&oc, o + 2, 2);
                memcpy(&os, o + 4, 2);
                if (oc != NOCELL && oc < NCELL && os < MAXPROC && *cell(f, os, oc) == CELL_PENDING) {
                    *cell(f, os, oc) = CELL_ACCEPTED;
                    want_ring(f, os, bells);
                }
            }
        }
        if (H32(f)[H32_ARMS])
            armed_slots(f, 0, 1, bells);
        count_op(f, f->c_recvs);
        return ST_OK;
    }
    if (H32(f)[H32_FLAGS] & F_CLOSED)
        return ST_SLOW;
    if (arm) {
        arm_recv(f, 1);
        *armed = 1;
    }
    return ST_EMPTY;
}

/* ---- methods ---------------------------------------------------------------------------------- */

static PyObject *
FastRing_send(FastRing *f, PyObject *arg)
{
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "send() needs bytes");
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(arg);
    if (n > INLINE_MAX)
        return Py_NewRef(SLOW);
    int rc = fr_lock(f);
    if (rc < 0)
        return NULL;
    if (rc == ST_BUSY)
        return Py_NewRef(SLOW);
    Bells bells;
    bells.n = 0;
    int st = send_locked(f, PyBytes_AS_STRING(arg), n, &bells);
    if (fr_unlock(f) < 0)
        return NULL; /* (the entry is published; only the RLock release failed) */
    if (ring(f, &bells) < 0)
        return NULL;
    return st == ST_OK ? Py_NewRef(Py_None) : Py_NewRef(SLOW);
}

static void
spin_paid(FastRing *f, int ok)
{
    if (ok) {
        f->spin_fails = 0;
    } else {
        if (f->spin_fails < 8)
            f->spin_fails++;
        f->spin_skip = (1 << f->spin_fails) - 1;
    }
}

static int
spin_allowed(FastRing *f)
{
    if (f->spin_ns <= 0)
        return 0;
    if (f->spin_skip) {
        f->spin_skip--;
        return 0;
    }
    return 1;
}

/* watch the change counter until it moves (0) or ``end`` passes (1) */
static int
spin(FastRing *f, int64_t end)
{
    uint64_t *seqp = (uint64_t *)&H64(f)[H64_SEQ];
    uint64_t seq = __atomic_load_n(seqp, __ATOMIC_ACQUIRE);
    int k = 0;
    while (__atomic_load_n(seqp, __ATOMIC_ACQUIRE) == seq) {
        if ((++k & 15) == 0 && now_ns() > end)
            return 1;
        cpu_relax();
    }
    return 0;
}

/* one locked receive attempt; returns ST_* or -1 */
static int
recv_try(FastRing *f, char *buf, Py_ssize_t *len, int arm, int *armed)
{
    Bells bells;
    bells.n = 0;
    int rc = fr_lock(f);
    if (rc != 0)
        return rc < 0 ? -1 : ST_BUSY;
    int st = recv_locked(f, buf, len, arm, armed, &bells);
    if (fr_unlock(f) < 0)
        st = -1;
    if (ring(f, &bells) < 0)
        st = -1;
    return st;
}

/* disarm after an error or a timeout (the attempt that gives up takes nothing) */
static int
disarm(FastRing *f, int *armed)
{
    if (!*armed)
        return 0;
    PyObject *et, *ev, *tb;
    PyErr_Fetch(&et, &ev, &tb);
    int rc;
    do {
        rc = fr_lock(f);
        if (rc == ST_BUSY) { /* a Python section of another thread: let it finish */
            Py_BEGIN_ALLOW_THREADS
            sched_yield();
            Py_END_ALLOW_THREADS
        }
    } while (rc == ST_BUSY);
    if (rc == 0) {
        arm_recv(f, -1);
        *armed = 0;
        rc = fr_unlock(f);
    }
    if (et != NULL) {
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    return rc;
}

static int
leader_release(FastRing *f)
{
    PyObject *r = PyObject_CallNoArgs(f->lrel);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* recv(timeout_ns) -> bytes (a pickle) | SLOW | TIMEOUT ; timeout_ns < 0: no timeout;
 * timeout_ns == 0: one attempt, no wait (SLOW when empty) */
static PyObject *
FastRing_recv(FastRing *f, PyObject *arg)
{
    long long timeout = PyLong_AsLongLong(arg);
    if (timeout == -1 && PyErr_Occurred())
        return NULL;
    char buf[INLINE_MAX];
    Py_ssize_t len = 0;
    int armed = 0;
    if (timeout == 0) {
        int st = recv_try(f, buf, &len, 0, &armed);
        if (st < 0)
            return NULL;
        if (st == ST_OK)
            return PyBytes_FromStringAndSize(buf, len);
        return Py_NewRef(SLOW);
    }
    int64_t deadline = timeout > 0 ? now_ns() + timeout : -1;
    int leader = 0, noarm = spin_allowed(f), spun = 0;
    int64_t spin_end = now_ns() + f->spin_ns;
    for (;;) {
        if (!noarm && !leader) { /* about to arm: become the leader (or leave it to Python) */
            PyObject *r = PyObject_CallOneArg(f->lacq, Py_False);
            if (r == NULL)
                goto error;
            leader = (r == Py_True);
            Py_DECREF(r);
            if (!leader)
                return Py_NewRef(SLOW); /* another thread waits on the direct bell */
        }
        int st = recv_try(f, buf, &len, !noarm, &armed);
        if (st < 0)
            goto error;
        if (st == ST_OK) {
            if (noarm && spun)
                spin_paid(f, 1);
            if (leader && leader_release(f) < 0)
                return NULL;
            return PyBytes_FromStringAndSize(buf, len);
        }
        if (st != ST_EMPTY) { /* ST_SLOW / ST_BUSY: nothing is armed */
            if (disarm(f, &armed) < 0)
                goto error;
            if (leader && leader_release(f) < 0)
                return NULL;
            return Py_NewRef(SLOW);
        }
        if (noarm) {
            spun = 1;
            if (spin(f, spin_end)) {
                noarm = 0;
                spin_paid(f, 0);
            }
            continue;
        }
        /* armed on the direct bell: sleep */
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ns();
            ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
        }
        struct pollfd pfd = {f->dbell, POLLIN, 0};
        int n, err;
        Py_BEGIN_ALLOW_THREADS
        n = poll(&pfd, 1, ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto error;
                continue; /* retry the attempt (the next one disarms first) */
            }
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            goto error;
        }
        /* drain, *then* clear the pending flag (see Waiting._poll_direct) */
        char junk[64];
        while (recv(f->dbell, junk, sizeof junk, MSG_DONTWAIT) >= 0)
            ;
        P32(f)[f->slot * (SLOT_BYTES / 4) + P_BELLD] = 0;
        if (n == 0 && ms >= 0) { /* timed out: give up (disarm, take nothing) */
            if (disarm(f, &armed) < 0)
                goto error;
            if (leader_release(f) < 0)
                return NULL;
            return Py_NewRef(TIMEOUT);
        }
        noarm = spin_allowed(f);
        spun = 0;
        spin_end = now_ns() + f->spin_ns;
    }
error:
    disarm(f, &armed);
    if (leader) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        leader_release(f);
        PyErr_Clear();
        PyErr_Restore(et, ev, tb);
    }
    return NULL;
}

static PyObject *
FastRing_spin_score(FastRing *f, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("ii", f->spin_fails, f->spin_skip);
}

static PyObject *
FastRing_get_last_slot(FastRing *f, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(f->last_slot);
}

static int
FastRing_init(FastRing *f, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"map", "ofd", "dbell", "slot", "ring_off", "ring_n", "cap", "drop",
                         "counters", "lock", "leader", "on_wake", "heal", "uuidhex", "spin_ns",
                         NULL};
    PyObject *map, *alock, *leader, *on_wake, *heal, *counters;
    const char *uuidhex;
    unsigned long long ring_off, ring_n, cap;
    unsigned int drop;
    long long spin_ns;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiiiKKKIOOOOOyL", kw, &map, &f->ofd, &f->dbell,
                                     &f->slot, &ring_off, &ring_n, &cap, &drop, &counters, &alock,
                                     &leader, &on_wake, &heal, &uuidhex, &spin_ns))
        return -1;
    if (f->have_view) {
        PyErr_SetString(PyExc_RuntimeError, "already initialized");
        return -1;
    }
    if (!PyArg_ParseTuple(counters, "iiiii", &f->c_sends, &f->c_recvs, &f->c_first, &f->c_last,
                          &f->c_peak))
        return -1;
    if (strlen(uuidhex) != 32 || f->slot < 0 || f->slot >= MAXPROC || ring_n == 0) {
        PyErr_SetString(PyExc_ValueError, "bad region geometry");
        return -1;
    }
    if (PyObject_GetBuffer(map, &f->view, PyBUF_WRITABLE) < 0)
        return -1;
    f->have_view = 1;
    if ((uint64_t)f->view.len < ring_off + ring_n * ENTRY) {
        PyErr_SetString(PyExc_ValueError, "region smaller than its ring");
        return -1;
    }
    f->base = f->view.buf;
    f->ring_off = ring_off;
    f->ring_n = ring_n;
    f->cap = cap;
    f->drop = drop;
    f->spin_ns = spin_ns;
    memcpy(f->uuidhex, uuidhex, 33);
    PyObject *rl = PyObject_GetAttrString(alock, "_lk");
    if (rl == NULL)
        return -1;
    f->acq = PyObject_GetAttrString(rl, "acquire");
    f->rel = PyObject_GetAttrString(rl, "release");
    Py_DECREF(rl);
    f->lacq = PyObject_GetAttrString(leader, "acquire");
    f->lrel = PyObject_GetAttrString(leader, "release");
    if (!f->acq || !f->rel || !f->lacq || !f->lrel)
        return -1;
    f->alock = Py_NewRef(alock);
    f->on_wake = Py_NewRef(on_wake);
    f->heal = Py_NewRef(heal);
    f->sfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (f->sfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

static PyObject *
FastRing_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    FastRing *f = (FastRing *)type->tp_alloc(type, 0);
    if (f != NULL)
        f->sfd = -1;
    return (PyObject *)f;
}

static int
FastRing_traverse(FastRing *f, visitproc visit, void *arg)
{
    Py_VISIT(f->acq);
    Py_VISIT(f->rel);
    Py_VISIT(f->alock);
    Py_VISIT(f->lacq);
    Py_VISIT(f->lrel);
    Py_VISIT(f->on_wake);
    Py_VISIT(f->heal);
    return 0;
}

static int
FastRing_clear(FastRing *f)
{
    Py_CLEAR(f->acq);
    Py_CLEAR(f->rel);
    Py_CLEAR(f->alock);
    Py_CLEAR(f->lacq);
    Py_CLEAR(f->lrel);
    Py_CLEAR(f->on_wake);
    Py_CLEAR(f->heal);
    return 0;
}

static void
FastRing_dealloc(FastRing *f)
{
    PyObject_GC_UnTrack(f);
    FastRing_clear(f);
    if (f->have_view)
        PyBuffer_Release(&f->view);
    if (f->sfd >= 0)
        close(f->sfd);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef FastRing_methods[] = {
    {"send", (PyCFunction)FastRing_send, METH_O,
     "send(pickle: bytes) -> None | SLOW: append an inline entry when the buffer has room."},
    {"recv", (PyCFunction)FastRing_recv, METH_O,
     "recv(timeout_ns) -> bytes | SLOW | TIMEOUT: take (or wait for) an inline entry."},
    {"spin_score", (PyCFunction)FastRing_spin_score, METH_NOARGS,
     "(consecutive failed spins, waits left that skip spinning)"},
    {NULL}};

static PyGetSetDef FastRing_getset[] = {
    {"last_slot", (getter)FastRing_get_last_slot, NULL,
     "sender slot of the last entry taken (for protocol errors)", NULL},
    {NULL}};

static PyTypeObject FastRingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kcoro.ipc._fastring.FastRing",
    .tp_basicsize = sizeof(FastRing),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C fast path of one process's endpoint of an IPC channel.",
    .tp_new = FastRing_new,
    .tp_init = (initproc)FastRing_init,
    .tp_dealloc = (destructor)FastRing_dealloc,
    .tp_traverse = (traverseproc)FastRing_traverse,
    .tp_clear = (inquiry)FastRing_clear,
    .tp_methods = FastRing_methods,
    .tp_getset = FastRing_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kcoro.ipc._fastring",
    "C fast path for small messages on kcoro.ipc channels (optional).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__fastring(void)
{
    if (PyType_Ready(&FastRingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    s_depth = PyUnicode_InternFromString("_depth");
    SLOW = PyUnicode_InternFromString("SLOW");
    TIMEOUT = PyUnicode_InternFromString("TIMEOUT");
    if (s_depth == NULL || SLOW == NULL || TIMEOUT == NULL)
        goto fail;
    if (PyModule_AddObjectRef(m, "FastRing", (PyObject *)&FastRingType) < 0
        || PyModule_AddObjectRef(m, "SLOW", SLOW) < 0
        || PyModule_AddObjectRef(m, "TIMEOUT", TIMEOUT) < 0)
        goto fail;
    PyObject *layout = Py_BuildValue("(iiiiiiii)", HDR, MAXPROC, SLOT_BYTES, NCELL, ENTRY,
                                     INLINE_MAX, H_CNT, DIRECT);
    if (layout == NULL)
        goto fail;
    int rc = PyModule_AddObjectRef(m, "LAYOUT", layout);
    Py_DECREF(layout);
    if (rc < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
