/* kcoro.ipc._fastring: the fast paths of cross-process channels (kcoro.ipc), in C.
 *
 * Optional (built by setup.py like kcoro._speedups; not used when it is missing or KCORO_PURE
 * is set).  It mirrors, branch for branch, the Python reference in _ring.py / _waiting.py for
 * the common cases only, and hands every other case back untouched (returns SLOW) so that the
 * semantics live in one place:
 *
 *   send(obj)      pickle a plain item (int, float, str, bytes, bool, None, complex) or take a
 *                  ready pickle (bytes, send_pickle) and append it as an inline entry to a
 *                  buffered SUSPEND channel with room; ring the armed receivers.  SLOW
 *                  otherwise (full / rendezvous: an offer is needed; closed; drop policies; an
 *                  item that is not plain or whose pickle is larger than INLINE_MAX).
 *   send_payload   move a Payload of the channel's arena (WRITING or held by us) into a buffer
 *                  with room as a descriptor entry, pinned by us until our views are gone.
 *   recv(timeout)  take the entry at the head (settling the offer window, ringing armed
 *                  senders): an inline one is unpickled; a block / payload one is validated and
 *                  held (holder, ledger, counters) and returned as a Held descriptor for the
 *                  Python code to rebuild the message over; or wait as the endpoint's *leader*:
 *                  spin on the change counter (scored: see below), then arm the slot's direct
 *                  doorbell in the same locked section that found the ring empty, sleep in one
 *                  blocking recv() on the bell without the GIL (poll() first with a timeout),
 *                  then clear the bell's pending flag and retry.  SLOW when the head entry is
 *                  malformed, when the channel is closed and empty, or when another thread is
 *                  the leader; TIMEOUT on timeout; BAD when the inline pickle
 *                  does not load (``bad_data`` / ``last_slot`` tell the Python code what to
 *                  report).  Nothing is left armed when it returns.
 *   ack / unpin / alloc, take / give, xlock / xunlock
 *                  Region.ack / unpin, SharedArena.alloc, the arena's buddy allocator (the same
 *                  algorithm on the same metadata as kcoro._payload.Arena: processes with and
 *                  without this module share one arena), and the lock of Python sections.
 *
 * The lock is the channel lock of the Python code (see _region.py):
 *   - robust mutex regions: pthread_mutex_trylock (no syscall), else pthread_mutex_lock without
 *     the GIL; EOWNERDEAD (its owner died) -> pthread_mutex_consistent.  The mutex excludes the
 *     threads of this process too; a section of the Python code in progress in this process
 *     (the ArenaLock's _depth > 0: possibly our own thread, re-entering) sends us to SLOW.
 *   - flock regions: the process-local RLock (non-blocking; busy -> SLOW), then flock(LOCK_EX)
 *     on this process's open file description (without the GIL if another process holds it).
 * Then the dirty marker: set means a process died inside a section; we let go and have the Python
 * code repair it (heal), then retry.  Inside a section no Python code runs (no allocation, no
 * call), so a finalizer cannot re-enter the lock.  Bells are rung after the lock is released.
 *
 * The leader (the one thread of this process that waits on the endpoint's direct bell) is a flag
 * of this object protected by the GIL; the Python path takes it through acquire()/release().
 *
 * Spin scoring: spinning pays only when the partner runs at the same time on another CPU; a
 * spin that saw nothing makes the next 2^k - 1 waits sleep at once (k <= 8, reset by a success).
 *
 * After fork() the child's copy of this object refers to its parent's slot and lock: every call
 * returns SLOW there (a pthread_atfork generation), and the Python code makes the child its own.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
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
#define E_BLOCK 2
#define E_PAYLOAD 3
#define QUEUED 0xFFFE
#define NO_HOLDER 0xFFFF
#define NLEDGER 64
#define P_NHELD 7
#define P_LEDGER (P_CELLS + NCELL) /* u32 index: (idx, gen, kind) triples */
/* arena metadata (kcoro._payload) */
#define A_FREE 1
#define A_ALLOC 2
#define AC_IN_USE 0
#define AC_PEAK 1
#define AC_BLOCKS 2
#define AC_ALLOCS 3
#define AC_FREES 4
#define AC_STALE 7
#define F_PIN 1
#define F_ACKED 2
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

_Static_assert(sizeof(pthread_mutex_t) <= 64, "the header reserves 64 bytes for the mutex");

enum { ST_OK = 0, ST_SLOW = 1, ST_EMPTY = 2, ST_BUSY = 3 };

static PyObject *SLOW, *TIMEOUT, *BAD;  /* unique sentinel objects */
static PyObject *s_depth, *py_dumps, *py_loads, *i_five;
static unsigned long fork_gen;           /* bumped in every forked child */

static void
after_fork_child(void)
{
    fork_gen++;
}

typedef struct {
    uint64_t nonce;
    socklen_t len;
    struct sockaddr_un addr;
} BellAddr;

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    char *base;
    int ofd, dbell, sfd, slot;
    pthread_mutex_t *mx;         /* the region's robust mutex, or NULL: flock on ofd */
    uint64_t ring_off, ring_n, cap;
    uint32_t drop;
    int c_sends, c_recvs, c_first, c_last, c_peak, c_zrecv, c_bytes_recv, c_zsent, c_bytes_sent;
    /* the arena's metadata (kcoro._payload._Meta), inside the same mapping */
    uint8_t *a_state, *a_order, *a_flags;
    uint16_t *a_holder;
    uint32_t *a_gen, *a_nxt, *a_prv, *a_heads;
    uint64_t *a_cnt;
    uint32_t a_nblk, a_maxorder, a_shift;
    PyObject *acq, *rel;         /* flock regions: the process-local RLock's acquire / release */
    PyObject *alock;             /* the ArenaLock (its _depth tells a Python section) */
    PyObject *on_wake, *heal;
    PyObject *bad_data;          /* the inline pickle that did not load (BAD) */
    char uuidhex[33];
    int64_t spin_ns;
    int spin_fails, spin_skip;
    int last_slot;
    uint8_t d_kind;              /* the descriptor of the last block / payload entry taken */
    uint32_t d_idx, d_gen, d_length;
    uint64_t d_nbytes;
    int leader;                  /* a thread of this process waits on the direct bell */
    unsigned long gen;           /* fork_gen when made */
    BellAddr bells[MAXPROC][2];  /* cached doorbell addresses (I/O, direct) */
} FastRing;

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

static int
call_void(PyObject *fn)
{
    PyObject *r = PyObject_CallNoArgs(fn);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- the lock ------------------------------------------------------------------------------- */

static inline void
xunlock(FastRing *f)
{
    if (f->mx != NULL)
        pthread_mutex_unlock(f->mx);
    else
        flock(f->ofd, LOCK_UN);
}

/* Is a section of the Python code in progress in this process?  1 yes, 0 no, -1 error. */
static int
python_section(FastRing *f)
{
    PyObject *d = PyObject_GetAttr(f->alock, s_depth);
    if (d == NULL)
        return -1;
    long depth = PyLong_AsLong(d);
    Py_DECREF(d);
    if (depth == -1 && PyErr_Occurred())
        return -1;
    return depth != 0;
}

/* 0: locked; ST_BUSY: a Python section of this process is in progress (or, for flock regions,
 * another thread holds the process lock); -1: error (exception set). */
static int
fr_lock(FastRing *f)
{
    for (;;) {
        int held_rlock = 0;
        if (f->mx == NULL) {
            PyObject *r = PyObject_CallOneArg(f->acq, Py_False);
            if (r == NULL)
                return -1;
            held_rlock = (r == Py_True);
            Py_DECREF(r);
            if (!held_rlock)
                return ST_BUSY;
        }
        int ps = python_section(f);
        if (ps != 0) {
            if (held_rlock && call_void(f->rel) < 0)
                return -1;
            return ps < 0 ? -1 : ST_BUSY;
        }
        int rc = 0, err = 0;
        if (f->mx != NULL) { /* no syscall unless contended */
            rc = pthread_mutex_trylock(f->mx);
            if (rc == EBUSY) {
                Py_BEGIN_ALLOW_THREADS
                rc = pthread_mutex_lock(f->mx);
                Py_END_ALLOW_THREADS
            }
            if (rc == EOWNERDEAD) /* its owner died: ours now; the dirty marker tells the rest */
                rc = pthread_mutex_consistent(f->mx);
            err = rc;
        }
        else if (flock(f->ofd, LOCK_EX | LOCK_NB) != 0) {
            rc = -1;
            err = errno;
            while (err == EWOULDBLOCK || err == EINTR) {
                if (err == EINTR && PyErr_CheckSignals() < 0)
                    break;
                Py_BEGIN_ALLOW_THREADS
                rc = flock(f->ofd, LOCK_EX);
                err = rc ? errno : 0;
                Py_END_ALLOW_THREADS
                if (rc == 0 || err != EINTR)
                    break;
            }
        }
        if (rc != 0) {
            if (!PyErr_Occurred()) {
                errno = err;
                PyErr_SetFromErrno(PyExc_OSError);
            }
            if (held_rlock) {
                PyObject *et, *ev, *tb;
                PyErr_Fetch(&et, &ev, &tb);
                if (call_void(f->rel) < 0)
                    PyErr_Clear();
                PyErr_Restore(et, ev, tb);
            }
            return -1;
        }
        volatile uint32_t *h32 = H32(f);
        if (h32[H32_DIRTY] == 0) {
            h32[H32_DIRTY] = (uint32_t)f->slot + 1;
            return 0;
        }
        /* a process died inside a section: let the Python code repair it, then retry */
        xunlock(f);
        if (held_rlock && call_void(f->rel) < 0)
            return -1;
        if (call_void(f->heal) < 0)
            return -1;
    }
}

static int
fr_unlock(FastRing *f)
{
    __atomic_store_n((uint64_t *)&H64(f)[H64_SEQ], H64(f)[H64_SEQ] + 1, __ATOMIC_RELEASE);
    H32(f)[H32_DIRTY] = 0;
    xunlock(f);
    if (f->mx == NULL)
        return call_void(f->rel);
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
    if ((p[P_ARMR] || p[P_ARMS]) && !p[P_BELL]) {
        p[P_BELL] = 1;
        out->s[out->n++] = (int)s;
    }
    if ((p[P_ARMDR] || p[P_ARMDS]) && !p[P_BELLD]) {
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
static void
ring(FastRing *f, Bells *b)
{
    for (int i = 0; i < b->n; i++) {
        int s = b->s[i] & ~DIRECT, direct = (b->s[i] & DIRECT) != 0;
        if (!direct && s == f->slot) {
            P32(f)[s * (SLOT_BYTES / 4) + P_BELL] = 0;
            if (call_void(f->on_wake) < 0) /* a bug in a waker: never lose the operation */
                PyErr_WriteUnraisable(f->on_wake);
            continue;
        }
        uint64_t nonce;
        memcpy(&nonce, f->base + HDR + (size_t)s * SLOT_BYTES + 8, 8);
        BellAddr *a = &f->bells[s][direct];
        if (a->len == 0 || a->nonce != nonce) {
            memset(&a->addr, 0, sizeof a->addr);
            a->addr.sun_family = AF_UNIX;
            int n = snprintf(a->addr.sun_path + 1, sizeof a->addr.sun_path - 1,
                             "kcoro-%s-%d-%llx%s", f->uuidhex, s, (unsigned long long)nonce,
                             direct ? "-d" : "");
            if (n <= 0 || n >= (int)sizeof a->addr.sun_path - 1)
                continue;
            a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
            a->nonce = nonce;
        }
        (void)sendto(f->sfd, "\1", 1, MSG_DONTWAIT, (struct sockaddr *)&a->addr, a->len);
    }
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
    uint8_t hdr[44];
    memset(hdr, 0, sizeof hdr);
    uint16_t c = NOCELL, sl = (uint16_t)f->slot;
    uint32_t len = (uint32_t)n;
    uint64_t nb = (uint64_t)n;
    hdr[0] = E_INLINE; /* kind u8, pad u8, cell u16, slot u16, pad u16, len u32, idx u32, */
    memcpy(hdr + 2, &c, 2); /* gen u32, nbytes u64, op u64 (struct "<BBHHHIIIQQ") */
    memcpy(hdr + 4, &sl, 2);
    memcpy(hdr + 8, &len, 4);
    memcpy(hdr + 20, &nb, 8);
    memcpy(e, hdr, sizeof hdr);
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
        uint8_t kind = (uint8_t)e[0];
        if (c != NOCELL && (c >= NCELL || s >= MAXPROC))
            return ST_SLOW;
        if (kind == E_INLINE) {
            if (length > INLINE_MAX)
                return ST_SLOW;
            memcpy(buf, e + 48, length);
            *len = length;
        }
        else if (kind == E_BLOCK || kind == E_PAYLOAD) {
            /* take ownership of its block (HELD by us, in our ledger): only a valid QUEUED
             * block of that generation; anything else is the Python path's protocol error */
            uint32_t idx, gen;
            uint64_t nbytes;
            memcpy(&idx, e + 12, 4);
            memcpy(&gen, e + 16, 4);
            memcpy(&nbytes, e + 20, 8);
            if (f->a_state == NULL || idx >= f->a_nblk || f->a_state[idx] != A_ALLOC
                || f->a_gen[idx] != gen || f->a_holder[idx] != QUEUED)
                return ST_SLOW;
            f->a_holder[idx] = (uint16_t)f->slot;
            volatile uint32_t *p = P32(f) + f->slot * (SLOT_BYTES / 4);
            uint32_t n = p[P_NHELD];
            if (n < NLEDGER) {
                p[P_LEDGER + 3 * n] = idx;
                p[P_LEDGER + 3 * n + 1] = gen;
                p[P_LEDGER + 3 * n + 2] = kind;
                p[P_NHELD] = n + 1;
            }
            volatile uint64_t *c64 = C64(f);
            if (kind == E_PAYLOAD) {
                c64[f->c_zrecv] += 1;
                c64[f->c_bytes_recv] += nbytes;
            }
            else if (length) {
                c64[f->c_bytes_recv] += length;
            }
            f->d_kind = kind;
            f->d_idx = idx;
            f->d_gen = gen;
            f->d_nbytes = nbytes;
            f->d_length = length;
            *len = -1; /* a descriptor, not bytes */
        }
        else {
            return ST_SLOW;
        }
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
                if (oc != NOCELL && oc < NCELL && os < MAXPROC
                    && *cell(f, os, oc) == CELL_PENDING) {
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

/* ---- send ------------------------------------------------------------------------------------- */

static PyObject *
send_pickle(FastRing *f, const char *data, Py_ssize_t n)
{
    if (n > INLINE_MAX || f->gen != fork_gen)
        return Py_NewRef(SLOW);
    int rc = fr_lock(f);
    if (rc < 0)
        return NULL;
    if (rc == ST_BUSY)
        return Py_NewRef(SLOW);
    Bells bells;
    bells.n = 0;
    int st = send_locked(f, data, n, &bells);
    if (fr_unlock(f) < 0)
        return NULL; /* (flock regions: only the RLock release failed) */
    ring(f, &bells);
    return st == ST_OK ? Py_NewRef(Py_None) : Py_NewRef(SLOW);
}

/* pickles of these types never have out-of-band buffers */
static inline int
plain(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    return t == &PyLong_Type || t == &PyFloat_Type || t == &PyUnicode_Type
        || t == &PyBytes_Type || t == &PyBool_Type || o == Py_None || t == &PyComplex_Type;
}

static PyObject *
FastRing_send(FastRing *f, PyObject *obj)
{
    if (f->gen != fork_gen || !plain(obj))
        return Py_NewRef(SLOW);
    if ((PyUnicode_Check(obj) && PyUnicode_GET_LENGTH(obj) > INLINE_MAX)
        || (PyBytes_Check(obj) && PyBytes_GET_SIZE(obj) > INLINE_MAX))
        return Py_NewRef(SLOW); /* a block: do not pickle it twice */
    PyObject *args[2] = {obj, i_five};
    PyObject *data = PyObject_Vectorcall(py_dumps, args, 2, NULL);
    if (data == NULL)
        return NULL;
    PyObject *r = send_pickle(f, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
    Py_DECREF(data);
    return r;
}

static PyObject *
FastRing_send_pickle(FastRing *f, PyObject *arg)
{
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "send_pickle() needs bytes");
        return NULL;
    }
    return send_pickle(f, PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
}

/* ---- recv ------------------------------------------------------------------------------------- */

static void
spin_paid(FastRing *f, int ok)
{
    if (ok) {
        f->spin_fails = 0;
    }
    else {
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
    ring(f, &bells);
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
    for (;;) {
        rc = fr_lock(f);
        if (rc != ST_BUSY)
            break;
        /* a Python section of another thread: let it finish (ours cannot be in one) */
        Py_BEGIN_ALLOW_THREADS
        sched_yield();
        Py_END_ALLOW_THREADS
    }
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

/* The descriptor of a block / payload entry the C path took (held by this process now).  Not
 * constructible from Python, so no unpickled item can ever be one. */
typedef struct {
    PyObject_HEAD
    int kind, slot;
    unsigned int length, idx, gen;
    unsigned long long nbytes;
} Held;

static PyMemberDef Held_members[] = {
    {"kind", T_INT, offsetof(Held, kind), READONLY, NULL},
    {"slot", T_INT, offsetof(Held, slot), READONLY, NULL},
    {"length", T_UINT, offsetof(Held, length), READONLY, NULL},
    {"idx", T_UINT, offsetof(Held, idx), READONLY, NULL},
    {"gen", T_UINT, offsetof(Held, gen), READONLY, NULL},
    {"nbytes", T_ULONGLONG, offsetof(Held, nbytes), READONLY, NULL},
    {NULL}};

static PyTypeObject HeldType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kcoro.ipc._fastring.Held",
    .tp_basicsize = sizeof(Held),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = "A block / payload entry taken by the C path (now held by this process).",
    .tp_members = Held_members,
};

static PyObject *
loaded(FastRing *f, const char *buf, Py_ssize_t len)
{
    if (len < 0) { /* a block or payload */
        Held *h = PyObject_New(Held, &HeldType);
        if (h == NULL)
            return NULL;
        h->kind = f->d_kind;
        h->slot = f->last_slot;
        h->length = f->d_length;
        h->idx = f->d_idx;
        h->gen = f->d_gen;
        h->nbytes = f->d_nbytes;
        return (PyObject *)h;
    }
    PyObject *data = PyBytes_FromStringAndSize(buf, len);
    if (data == NULL)
        return NULL;
    PyObject *obj = PyObject_CallOneArg(py_loads, data);
    if (obj == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            Py_DECREF(data);
            return NULL; /* KeyboardInterrupt & co. propagate */
        }
        PyErr_Clear();
        Py_XSETREF(f->bad_data, data);
        return Py_NewRef(BAD);
    }
    Py_DECREF(data);
    return obj;
}

/* recv(timeout) -> object | SLOW | TIMEOUT | BAD ; timeout: None (wait), 0 (one attempt, no
 * wait: SLOW when empty) or seconds (a float, already validated) */
static PyObject *
FastRing_recv(FastRing *f, PyObject *arg)
{
    int64_t timeout = -1;
    if (arg != Py_None) {
        double t = PyFloat_AsDouble(arg);
        if (t == -1.0 && PyErr_Occurred())
            return NULL;
        timeout = t <= 0 ? 0 : t > 1e9 ? (int64_t)1e18 : (int64_t)(t * 1e9);
    }
    if (f->gen != fork_gen)
        return Py_NewRef(SLOW);
    char buf[INLINE_MAX];
    Py_ssize_t len = 0;
    int armed = 0;
    if (timeout == 0) {
        int st = recv_try(f, buf, &len, 0, &armed);
        if (st < 0)
            return NULL;
        if (st == ST_OK)
            return loaded(f, buf, len);
        return Py_NewRef(SLOW);
    }
    int64_t deadline = timeout > 0 ? now_ns() + timeout : -1;
    int leader = 0, noarm = spin_allowed(f), spun = 0;
    int64_t spin_end = now_ns() + f->spin_ns;
    for (;;) {
        if (!noarm && !leader) { /* about to arm: become the leader (or leave it to Python) */
            if (f->leader)
                return Py_NewRef(SLOW); /* another thread waits on the direct bell */
            f->leader = leader = 1;
        }
        int st = recv_try(f, buf, &len, !noarm, &armed);
        if (st < 0)
            goto error;
        if (st == ST_OK) {
            if (noarm && spun)
                spin_paid(f, 1);
            if (leader)
                f->leader = 0;
            return loaded(f, buf, len);
        }
        if (st != ST_EMPTY) { /* ST_SLOW / ST_BUSY: nothing is armed */
            if (leader)
                f->leader = 0;
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
        /* armed on the direct bell: sleep.  No timeout: one blocking recv() is the whole wait
         * (the bell socket is blocking; the Python path reads it with MSG_DONTWAIT); with a
         * timeout: poll, then take one.  At most one datagram is pending per clear of the flag,
         * so taking one is draining; a stray one only makes a later wait return early. */
        int ms = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ns();
            ms = left <= 0 ? 0 : left > (int64_t)INT32_MAX * 1000000 ? INT32_MAX
                                                                      : (int)((left + 999999) / 1000000);
        }
        char junk[64];
        int n, err;
        Py_BEGIN_ALLOW_THREADS
        if (ms < 0) {
            n = (int)recv(f->dbell, junk, sizeof junk, 0);
        }
        else {
            struct pollfd pfd = {f->dbell, POLLIN, 0};
            n = poll(&pfd, 1, ms);
            if (n > 0)
                (void)recv(f->dbell, junk, sizeof junk, MSG_DONTWAIT);
        }
        err = errno;
        Py_END_ALLOW_THREADS
        if (n < 0) {
            if (err == EINTR || err == EAGAIN) {
                if (PyErr_CheckSignals() < 0)
                    goto error;
                continue; /* retry the attempt (it disarms first) */
            }
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            goto error;
        }
        /* drained: *now* clear the pending flag (see Waiting._poll_direct) */
        P32(f)[f->slot * (SLOT_BYTES / 4) + P_BELLD] = 0;
        if (n == 0 && ms >= 0) { /* timed out: give up (disarm, take nothing) */
            if (disarm(f, &armed) < 0)
                goto error;
            f->leader = 0;
            return Py_NewRef(TIMEOUT);
        }
        noarm = spin_allowed(f);
        spun = 0;
        spin_end = now_ns() + f->spin_ns;
    }
error:
    disarm(f, &armed);
    if (leader)
        f->leader = 0;
    return NULL;
}

/* ---- the arena's buddy allocator (kcoro._payload.Arena._take / _give, branch for branch) -----
 * Called by SharedArena with the channel lock held (a Python section); no Python runs here. */

static inline void
a_push(FastRing *f, uint32_t i, uint32_t o)
{
    uint32_t h = f->a_heads[o];
    f->a_state[i] = A_FREE;
    f->a_order[i] = (uint8_t)o;
    f->a_prv[i] = 0;
    f->a_nxt[i] = h;
    if (h)
        f->a_prv[h - 1] = i + 1;
    f->a_heads[o] = i + 1;
}

static inline void
a_unlink(FastRing *f, uint32_t i, uint32_t o)
{
    uint32_t p = f->a_prv[i], n = f->a_nxt[i];
    if (p)
        f->a_nxt[p - 1] = n;
    else
        f->a_heads[o] = n;
    if (n)
        f->a_prv[n - 1] = p;
}

/* allocate a block for n bytes: its head index, or -1 */
static long long
a_take(FastRing *f, long long n, long holder, long flags)
{
    uint64_t blocks = ((uint64_t)n + (1ULL << f->a_shift) - 1) >> f->a_shift;
    uint32_t o = blocks <= 1 ? 0 : (uint32_t)(64 - __builtin_clzll(blocks - 1));
    if (o > f->a_maxorder)
        return -1;
    uint32_t k = o;
    while (k <= f->a_maxorder && !f->a_heads[k])
        k++;
    if (k > f->a_maxorder)
        return -1;
    uint32_t i = f->a_heads[k] - 1;
    a_unlink(f, i, k);
    while (k > o) { /* split, keeping the lower half */
        k--;
        a_push(f, i + (1u << k), k);
    }
    f->a_order[i] = (uint8_t)o;
    f->a_state[i] = A_ALLOC;
    f->a_holder[i] = (uint16_t)holder;
    f->a_flags[i] = (uint8_t)flags;
    uint64_t *c = f->a_cnt;
    c[AC_IN_USE] += (1ULL << f->a_shift) << o;
    if (c[AC_IN_USE] > c[AC_PEAK])
        c[AC_PEAK] = c[AC_IN_USE];
    c[AC_BLOCKS] += 1;
    c[AC_ALLOCS] += 1;
    return i;
}

/* take(nbytes, holder, flags) -> block index, or -1 (no block); None: use the Python code */
static PyObject *
FastRing_take(FastRing *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "take(nbytes, holder, flags)");
        return NULL;
    }
    if (f->a_state == NULL || f->gen != fork_gen)
        Py_RETURN_NONE;
    long long n = PyLong_AsLongLong(args[0]);
    long holder = PyLong_AsLong(args[1]), flags = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLongLong(a_take(f, n < 1 ? 1 : n, holder, flags));
}

/* return block i of generation gen to the free lists: 1, or 0 if stale (counted) */
static int
a_give(FastRing *f, long long i, long long gen)
{
    uint64_t *c = f->a_cnt;
    if (i < 0 || i >= f->a_nblk || f->a_state[i] != A_ALLOC || f->a_gen[i] != (uint64_t)gen) {
        c[AC_STALE] += 1;
        return 0;
    }
    uint32_t b, j = (uint32_t)i, o = f->a_order[j];
    f->a_gen[j] = (uint32_t)(gen + 1);
    f->a_holder[j] = NO_HOLDER;
    f->a_flags[j] = 0;
    c[AC_IN_USE] -= (1ULL << f->a_shift) << o;
    c[AC_BLOCKS] -= 1;
    c[AC_FREES] += 1;
    while (o < f->a_maxorder) { /* merge with a free buddy of the same order */
        b = j ^ (1u << o);
        if ((uint64_t)b + (1u << o) > f->a_nblk || f->a_state[b] != A_FREE || f->a_order[b] != o)
            break;
        a_unlink(f, b, o);
        f->a_state[b > j ? b : j] = 0;
        j = b < j ? b : j;
        o++;
    }
    a_push(f, j, o);
    return 1;
}

/* give(i, gen) -> bool (False: stale, counted); None: use the Python code */
static PyObject *
FastRing_give(FastRing *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "give(i, gen)");
        return NULL;
    }
    if (f->a_state == NULL || f->gen != fork_gen)
        Py_RETURN_NONE;
    long long i = PyLong_AsLongLong(args[0]), gen = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(a_give(f, i, gen));
}

/* ---- payloads moved between processes (Region: pin / unpin / ack, RingOps._append) ------------ */

static void
ledger_remove(FastRing *f, unsigned s, uint32_t idx, uint32_t gen)
{
    volatile uint32_t *p = P32(f) + s * (SLOT_BYTES / 4);
    uint32_t n = p[P_NHELD];
    if (n > NLEDGER)
        n = NLEDGER;
    for (uint32_t k = 0; k < n; k++) {
        if (p[P_LEDGER + 3 * k] == idx && p[P_LEDGER + 3 * k + 1] == gen) {
            for (int w = 0; w < 3; w++)
                p[P_LEDGER + 3 * k + w] = p[P_LEDGER + 3 * (n - 1) + w];
            p[P_NHELD] = n - 1;
            return;
        }
    }
}

/* lock for a payload operation: 0 locked, 1 use the Python code, -1 error */
static int
pay_lock(FastRing *f)
{
    if (f->a_state == NULL || f->gen != fork_gen)
        return 1;
    int rc = fr_lock(f);
    return rc < 0 ? -1 : rc == ST_BUSY ? 1 : 0;
}

/* send_payload(idx, gen, nbytes) -> None | SLOW: move a payload of this arena (WRITING or held
 * by us) into a buffer with room, as an entry; its block is pinned by us until the caller's
 * views are gone (unpin) */
static PyObject *
FastRing_send_payload(FastRing *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_payload(idx, gen, nbytes)");
        return NULL;
    }
    unsigned long long idx = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long gen = PyLong_AsUnsignedLongLong(args[1]);
    unsigned long long nbytes = PyLong_AsUnsignedLongLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    int rc = pay_lock(f);
    if (rc)
        return rc < 0 ? NULL : Py_NewRef(SLOW);
    Bells bells;
    bells.n = 0;
    volatile uint64_t *h64 = H64(f);
    uint64_t head = h64[H64_HEAD], tail = h64[H64_TAIL];
    int st = ST_SLOW;
    if (!(H32(f)[H32_FLAGS] & F_CLOSED) && !f->drop && f->cap && tail - head < f->cap
        && idx < f->a_nblk && f->a_state[idx] == A_ALLOC && f->a_gen[idx] == gen
        && f->a_holder[idx] == (uint16_t)f->slot && nbytes <= UINT32_MAX) {
        ledger_remove(f, (unsigned)f->slot, (uint32_t)idx, (uint32_t)gen);
        f->a_holder[idx] = QUEUED;
        f->a_flags[idx] = (uint8_t)(F_PIN | ((f->slot + 1) << 2));
        char *e = entry(f, tail);
        uint8_t hdr[44];
        memset(hdr, 0, sizeof hdr);
        uint16_t c = NOCELL, sl = (uint16_t)f->slot;
        uint32_t len = (uint32_t)nbytes, i32 = (uint32_t)idx, g32 = (uint32_t)gen;
        uint64_t nb = nbytes;
        hdr[0] = E_PAYLOAD;
        memcpy(hdr + 2, &c, 2);
        memcpy(hdr + 4, &sl, 2);
        memcpy(hdr + 8, &len, 4);
        memcpy(hdr + 12, &i32, 4);
        memcpy(hdr + 16, &g32, 4);
        memcpy(hdr + 20, &nb, 8);
        memcpy(e, hdr, sizeof hdr);
        h64[H64_TAIL] = tail + 1; /* publish */
        volatile uint64_t *c64 = C64(f);
        if (tail + 1 - head > c64[f->c_peak])
            c64[f->c_peak] = tail + 1 - head;
        if (nbytes)
            c64[f->c_bytes_sent] += nbytes;
        c64[f->c_zsent] += 1;
        count_op(f, f->c_sends);
        if (H32(f)[H32_ARMR])
            armed_slots(f, 1, 0, &bells);
        st = ST_OK;
    }
    if (fr_unlock(f) < 0)
        return NULL;
    ring(f, &bells);
    return st == ST_OK ? Py_NewRef(Py_None) : Py_NewRef(SLOW);
}

/* alloc(nbytes) -> (idx, gen) of a block now WRITING by us | None: no block right now, or use
 * the Python code (which spills) */
static PyObject *
FastRing_alloc(FastRing *f, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    int rc = pay_lock(f);
    if (rc)
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    long long i = a_take(f, n < 1 ? 1 : n, f->slot, 0);
    uint32_t gen = i >= 0 ? f->a_gen[i] : 0;
    if (fr_unlock(f) < 0)
        return NULL;
    if (i < 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(LI)", i, gen);
}

/* unpin(idx, gen) -> None | SLOW: the sender's last view of a moved payload is gone; free the
 * block if the receiver's ACK came first (and wake senders waiting for room) */
static PyObject *
FastRing_unpin(FastRing *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "unpin(idx, gen)");
        return NULL;
    }
    long long idx = PyLong_AsLongLong(args[0]), gen = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    int rc = pay_lock(f);
    if (rc)
        return rc < 0 ? NULL : Py_NewRef(SLOW);
    Bells bells;
    bells.n = 0;
    if (idx >= 0 && idx < f->a_nblk && f->a_state[idx] == A_ALLOC && f->a_gen[idx] == gen
        && f->a_flags[idx] & F_PIN) {
        int acked = f->a_flags[idx] & F_ACKED;
        f->a_flags[idx] = 0;
        if (acked && a_give(f, idx, gen) && H32(f)[H32_ARMS])
            armed_slots(f, 0, 1, &bells);
    }
    if (fr_unlock(f) < 0)
        return NULL;
    ring(f, &bells);
    Py_RETURN_NONE;
}

/* ack(idx, gen) -> None | SLOW: the receiver's last view of a block is gone (Region._ack_locked) */
static PyObject *
FastRing_ack(FastRing *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "ack(idx, gen)");
        return NULL;
    }
    long long idx = PyLong_AsLongLong(args[0]), gen = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    int rc = pay_lock(f);
    if (rc)
        return rc < 0 ? NULL : Py_NewRef(SLOW);
    Bells bells;
    bells.n = 0;
    int pinned = 0;
    if (idx >= 0 && idx < f->a_nblk && f->a_state[idx] == A_ALLOC && f->a_gen[idx] == gen) {
        uint16_t h = f->a_holder[idx];
        if (h < MAXPROC)
            ledger_remove(f, h, (uint32_t)idx, (uint32_t)gen);
        if (f->a_flags[idx] & F_PIN) { /* the sender still has views: free at its unpin */
            f->a_flags[idx] |= F_ACKED;
            f->a_holder[idx] = NO_HOLDER;
            pinned = 1;
        }
    }
    if (!pinned && a_give(f, idx, gen) && H32(f)[H32_ARMS])
        armed_slots(f, 0, 1, &bells);
    if (fr_unlock(f) < 0)
        return NULL;
    ring(f, &bells);
    Py_RETURN_NONE;
}

/* ---- the lock, for the Python path (Region._xlock / _xunlock: the ArenaLock's RLock is held) -- */

/* xlock() -> the dirty marker found (0: clean; else slot + 1 of a process that died inside a
 * section: the caller repairs); the marker is set to ours */
static PyObject *
FastRing_xlock(FastRing *f, PyObject *Py_UNUSED(ignored))
{
    if (f->gen != fork_gen)
        Py_RETURN_NONE; /* a forked child's copy: the Python code locks */
    int rc, err;
    if (f->mx != NULL) {
        rc = pthread_mutex_trylock(f->mx);
        if (rc == EBUSY) {
            Py_BEGIN_ALLOW_THREADS
            rc = pthread_mutex_lock(f->mx);
            Py_END_ALLOW_THREADS
        }
        if (rc == EOWNERDEAD)
            rc = pthread_mutex_consistent(f->mx);
        err = rc;
    }
    else if ((rc = flock(f->ofd, LOCK_EX | LOCK_NB)) == 0) {
        err = 0;
    }
    else {
        Py_BEGIN_ALLOW_THREADS
        do {
            rc = flock(f->ofd, LOCK_EX);
            err = rc ? errno : 0;
        } while (rc != 0 && err == EINTR);
        Py_END_ALLOW_THREADS
    }
    if (rc != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    volatile uint32_t *h32 = H32(f);
    uint32_t d = h32[H32_DIRTY];
    h32[H32_DIRTY] = (uint32_t)f->slot + 1;
    return PyLong_FromUnsignedLong(d);
}

static PyObject *
FastRing_xunlock(FastRing *f, PyObject *Py_UNUSED(ignored))
{
    if (f->gen != fork_gen)
        Py_RETURN_NONE; /* (as xlock) */
    __atomic_store_n((uint64_t *)&H64(f)[H64_SEQ], H64(f)[H64_SEQ] + 1, __ATOMIC_RELEASE);
    H32(f)[H32_DIRTY] = 0;
    xunlock(f);
    Py_RETURN_TRUE;
}

/* ---- the leader role, for the Python path -------------------------------------------------- */

static PyObject *
FastRing_acquire(FastRing *f, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 || PyObject_IsTrue(args[0])) {
        PyErr_SetString(PyExc_ValueError, "the leader role is only taken with acquire(False)");
        return NULL;
    }
    if (f->leader)
        Py_RETURN_FALSE;
    f->leader = 1;
    Py_RETURN_TRUE;
}

static PyObject *
FastRing_release(FastRing *f, PyObject *Py_UNUSED(ignored))
{
    if (!f->leader) {
        PyErr_SetString(PyExc_RuntimeError, "release of the leader role nobody holds");
        return NULL;
    }
    f->leader = 0;
    Py_RETURN_NONE;
}

static PyObject *
FastRing_locked(FastRing *f, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(f->leader);
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

static PyObject *
FastRing_get_bad_data(FastRing *f, void *Py_UNUSED(closure))
{
    return Py_NewRef(f->bad_data ? f->bad_data : Py_None);
}

/* ---- the type --------------------------------------------------------------------------------- */

static int
FastRing_init(FastRing *f, PyObject *args, PyObject *kwds)
{
    static char *kw[] = {"map", "ofd", "mutex_off", "dbell", "slot", "ring_off", "ring_n", "cap",
                         "drop", "counters", "lock", "on_wake", "heal", "uuidhex", "spin_ns",
                         "meta", NULL};
    PyObject *map, *alock, *on_wake, *heal, *counters, *meta = Py_None;
    const char *uuidhex;
    unsigned long long ring_off, ring_n, cap;
    unsigned int drop;
    long long spin_ns;
    Py_ssize_t mutex_off;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OiniiKKKIOOOOyL|O", kw, &map, &f->ofd,
                                     &mutex_off, &f->dbell, &f->slot, &ring_off, &ring_n, &cap,
                                     &drop, &counters, &alock, &on_wake, &heal, &uuidhex,
                                     &spin_ns, &meta))
        return -1;
    if (f->have_view) {
        PyErr_SetString(PyExc_RuntimeError, "already initialized");
        return -1;
    }
    if (!PyArg_ParseTuple(counters, "iiiiiiiii", &f->c_sends, &f->c_recvs, &f->c_first,
                          &f->c_last, &f->c_peak, &f->c_zrecv, &f->c_bytes_recv, &f->c_zsent,
                          &f->c_bytes_sent))
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
    if (mutex_off > 0) {
        if (mutex_off % 64 || mutex_off + 64 > HDR) {
            PyErr_SetString(PyExc_ValueError, "bad mutex offset");
            return -1;
        }
        f->mx = (pthread_mutex_t *)(f->base + mutex_off);
    }
    if (meta != Py_None) {
        /* byte offsets in the mapping of _Meta's arrays, then nblk, maxorder, log2(min_block) */
        unsigned long long o[9];
        unsigned int nblk, maxorder, shift;
        if (!PyArg_ParseTuple(meta, "KKKKKKKKKIII", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5],
                              &o[6], &o[7], &o[8], &nblk, &maxorder, &shift))
            return -1;
        for (int k = 0; k < 9; k++)
            if (o[k] >= (uint64_t)f->view.len) {
                PyErr_SetString(PyExc_ValueError, "arena metadata outside the region");
                return -1;
            }
        if (maxorder >= 48 || shift >= 32) {
            PyErr_SetString(PyExc_ValueError, "bad arena geometry");
            return -1;
        }
        f->a_state = (uint8_t *)(f->base + o[0]);
        f->a_order = (uint8_t *)(f->base + o[1]);
        f->a_flags = (uint8_t *)(f->base + o[2]);
        f->a_holder = (uint16_t *)(f->base + o[3]);
        f->a_gen = (uint32_t *)(f->base + o[4]);
        f->a_nxt = (uint32_t *)(f->base + o[5]);
        f->a_prv = (uint32_t *)(f->base + o[6]);
        f->a_heads = (uint32_t *)(f->base + o[7]);
        f->a_cnt = (uint64_t *)(f->base + o[8]);
        f->a_nblk = nblk;
        f->a_maxorder = maxorder;
        f->a_shift = shift;
    }
    f->ring_off = ring_off;
    f->ring_n = ring_n;
    f->cap = cap;
    f->drop = drop;
    f->spin_ns = spin_ns;
    f->gen = fork_gen;
    memcpy(f->uuidhex, uuidhex, 33);
    PyObject *rl = PyObject_GetAttrString(alock, "_lk");
    if (rl == NULL)
        return -1;
    f->acq = PyObject_GetAttrString(rl, "acquire");
    f->rel = PyObject_GetAttrString(rl, "release");
    Py_DECREF(rl);
    if (!f->acq || !f->rel)
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
    Py_VISIT(f->on_wake);
    Py_VISIT(f->heal);
    Py_VISIT(f->bad_data);
    return 0;
}

static int
FastRing_clear(FastRing *f)
{
    Py_CLEAR(f->acq);
    Py_CLEAR(f->rel);
    Py_CLEAR(f->alock);
    Py_CLEAR(f->on_wake);
    Py_CLEAR(f->heal);
    Py_CLEAR(f->bad_data);
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
     "send(item) -> None | SLOW: send a plain item (pickled here) into a buffer with room."},
    {"send_pickle", (PyCFunction)FastRing_send_pickle, METH_O,
     "send_pickle(data: bytes) -> None | SLOW: the same with a ready inline pickle."},
    {"recv", (PyCFunction)FastRing_recv, METH_O,
     "recv(timeout) -> item | Held | SLOW | TIMEOUT | BAD: take (or wait for) an entry."},
    {"take", (PyCFunction)(void (*)(void))FastRing_take, METH_FASTCALL,
     "take(nbytes, holder, flags) -> block | -1 | None: the arena's _take (lock held)."},
    {"give", (PyCFunction)(void (*)(void))FastRing_give, METH_FASTCALL,
     "give(i, gen) -> bool | None: the arena's _give (lock held)."},
    {"send_payload", (PyCFunction)(void (*)(void))FastRing_send_payload, METH_FASTCALL,
     "send_payload(idx, gen, nbytes) -> None | SLOW: move a payload into a buffer with room."},
    {"alloc", (PyCFunction)FastRing_alloc, METH_O,
     "alloc(nbytes) -> (idx, gen) | None: SharedArena.alloc's block (None: the Python code)."},
    {"unpin", (PyCFunction)(void (*)(void))FastRing_unpin, METH_FASTCALL,
     "unpin(idx, gen) -> None | SLOW: Region.unpin."},
    {"ack", (PyCFunction)(void (*)(void))FastRing_ack, METH_FASTCALL,
     "ack(idx, gen) -> None | SLOW: Region.ack."},
    {"xlock", (PyCFunction)FastRing_xlock, METH_NOARGS,
     "The channel lock for a Python section (its RLock held): the dirty marker found, or None "
     "(a forked child's copy: lock in Python)."},
    {"xunlock", (PyCFunction)FastRing_xunlock, METH_NOARGS,
     "End a Python section: True, or None (as xlock)."},
    {"acquire", (PyCFunction)(void (*)(void))FastRing_acquire, METH_FASTCALL,
     "acquire(False) -> bool: take the leader role (the direct bell) if nobody has it."},
    {"release", (PyCFunction)FastRing_release, METH_NOARGS, "Give the leader role back."},
    {"locked", (PyCFunction)FastRing_locked, METH_NOARGS, "Is the leader role taken?"},
    {"spin_score", (PyCFunction)FastRing_spin_score, METH_NOARGS,
     "(consecutive failed spins, waits left that skip spinning)"},
    {NULL}};

static PyGetSetDef FastRing_getset[] = {
    {"last_slot", (getter)FastRing_get_last_slot, NULL,
     "sender slot of the last entry taken (for protocol errors)", NULL},
    {"bad_data", (getter)FastRing_get_bad_data, NULL,
     "the last inline pickle that did not load (BAD)", NULL},
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

static PyObject *
sentinel(void)
{
    /* a unique object: an unpickled item can never be it */
    return PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type);
}

PyMODINIT_FUNC
PyInit__fastring(void)
{
    if (PyType_Ready(&FastRingType) < 0 || PyType_Ready(&HeldType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL)
        goto fail;
    py_dumps = PyObject_GetAttrString(pickle, "dumps");
    py_loads = PyObject_GetAttrString(pickle, "loads");
    Py_DECREF(pickle);
    s_depth = PyUnicode_InternFromString("_depth");
    i_five = PyLong_FromLong(5);
    SLOW = sentinel();
    TIMEOUT = sentinel();
    BAD = sentinel();
    if (!py_dumps || !py_loads || !s_depth || !i_five || !SLOW || !TIMEOUT || !BAD)
        goto fail;
    if (PyModule_AddObjectRef(m, "FastRing", (PyObject *)&FastRingType) < 0
        || PyModule_AddObjectRef(m, "SLOW", SLOW) < 0
        || PyModule_AddObjectRef(m, "TIMEOUT", TIMEOUT) < 0
        || PyModule_AddObjectRef(m, "BAD", BAD) < 0
        || PyModule_AddObjectRef(m, "Held", (PyObject *)&HeldType) < 0)
        goto fail;
    PyObject *layout = Py_BuildValue("(iiiiiiii)", HDR, MAXPROC, SLOT_BYTES, NCELL, ENTRY,
                                     INLINE_MAX, H_CNT, DIRECT);
    if (layout == NULL)
        goto fail;
    int rc = PyModule_AddObjectRef(m, "LAYOUT", layout);
    Py_DECREF(layout);
    if (rc < 0)
        goto fail;
    if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
