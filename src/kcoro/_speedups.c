/* kcoro._speedups: the channel fast paths of kcoro tasks, in C.
 *
 * This module is optional.  It mirrors, branch for branch, the inlined fast paths of
 * Channel.send / Channel.recv in _chan.py (the reference implementation, used when this module
 * is missing or KCORO_PURE=1 is set): direct hand-off to a parked plain receiver, append to a
 * buffer with room, take from the buffer, take from / refill from a parked plain sender, and
 * parking on the task's reusable ticket.  Every other case (no kcoro task in this thread,
 * timeout= or cancel=, closed channels, overflow policies, select entries, a first wait that
 * needs a fresh ticket, cancelled waits, sized items other than bytes/bytearray/memoryview)
 * is delegated to the Python slow paths, so semantics live in one place.
 *
 * Why it is safe without taking the kernel lock: the section below runs no Python code (no
 * calls into Python, no deallocation of user objects: every value it overwrites is None, a
 * bool or an int), so no other thread can run while it does; it only checks that no Python
 * thread is inside a kernel section (the owner dict is empty) before touching channel state.
 *
 * The awaitables implement am_send (PEP 590-era "send" slot): a completed operation returns
 * PYGEN_RETURN with its value, with no frame and no StopIteration object; a parked one yields
 * its ticket to the runtime, exactly as the Python trap does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <pythread.h>
#include <stdint.h>

/* ---- configuration captured from the Python classes ---------------------------------------- */
static PyTypeObject *TicketType, *TaskType, *ChannelType, *RuntimeType;
static PyObject *owner_dict;          /* _klock._OWNER: non-empty while a Python thread is
                                         inside a kernel section */
static PyObject *sized_set;           /* _chan._SIZED_TYPES */
static PyObject *py_nbytes;           /* _chan._nbytes */
static PyTypeObject *PayloadType;     /* kcoro.Payload (configure_payload), or NULL */
static Py_ssize_t p_nbytes;           /* its ``nbytes`` slot */
static PyObject *deque_append, *deque_popleft;
static PyObject *s_send_slow, *s_recv_slow, *s_park_failed, *s_send_any, *s_recv_any;
static PyObject *s_send_foreign, *s_recv_foreign, *s_try_send_slow, *s_try_recv_slow;
static PyObject *s_anext_any;
static PyObject *s_poke, *s_READY, *s_wake_waker;
static PyObject *ChannelClosedType;
static PyObject *i_PARKED, *i_READY, *i_COMPLETED;  /* small ints: shared singletons */
static Py_tss_t rt_key = Py_tss_NEEDS_INIT;
static PyObject *get_running_loop;  /* asyncio._get_running_loop */
static int configured = 0;

/* slot offsets */
static Py_ssize_t c_buf, c_cap, c_closed, c_drop, c_nrecv, c_nsend, c_recvq, c_sendq, c_peak,
    c_recvs, c_bytes_recv, c_buf_bytes, c_last_op_ns, c_first_op_ns, c_undelivered,
    c_lost_bytes, c_on_undelivered;
static Py_ssize_t t_state, t_waker, t_payload, t_item, t_linked;
static Py_ssize_t k_scope, k_budget, k_tk, k_on, k_rt, k_state;
static Py_ssize_t s_eff;
static Py_ssize_t r_current, r_ready, r_asleep, r_now_ns;

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static int
slot_offset(PyObject *cls, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString(cls, "__dict__");
    if (d == NULL)
        return -1;
    PyObject *descr = PyMapping_GetItemString(d, name);
    Py_DECREF(d);
    if (descr == NULL)
        return -1;
    if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ member", cls, name);
        Py_DECREF(descr);
        return -1;
    }
    *out = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    return 0;
}

/* Replace a slot value; the old one must not be the last reference to anything with a
 * finalizer (see the header comment). */
static inline void
slot_set(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    Py_INCREF(v);
    SLOT(o, off) = v;
    Py_XDECREF(old);
}

static inline int
slot_add(PyObject *o, Py_ssize_t off, Py_ssize_t delta)
{
    PyObject *v = SLOT(o, off);
    if (v == NULL || !PyLong_CheckExact(v)) {
        PyErr_SetString(PyExc_SystemError, "kcoro._speedups: counter slot is not an int");
        return -1;
    }
    Py_ssize_t x = PyLong_AsSsize_t(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    PyObject *n = PyLong_FromSsize_t(x + delta);
    if (n == NULL)
        return -1;
    SLOT(o, off) = n;
    Py_DECREF(v);
    return 0;
}

static inline Py_ssize_t
slot_ssize(PyObject *o, Py_ssize_t off)
{
    PyObject *v = SLOT(o, off);
    if (v == NULL || !PyLong_CheckExact(v))
        return -1;
    return PyLong_AsSsize_t(v);
}

/* Bytes of an item without running Python code: 0 if unsized, -2 if sized by a registered
 * Python function (the caller must take the slow path), -1 on error. */
static Py_ssize_t
builtin_nbytes(PyObject *item)
{
    PyTypeObject *tp = Py_TYPE(item);
    if (tp == &PyLong_Type || tp == &PyUnicode_Type || tp == &PyFloat_Type || tp == &PyTuple_Type
        || item == Py_None)
        return 0;
    if (tp == &PyBytes_Type)
        return PyBytes_GET_SIZE(item);
    if (tp == &PyByteArray_Type)
        return PyByteArray_GET_SIZE(item);
    if (tp == &PyMemoryView_Type) {
        if (((PyMemoryViewObject *)item)->flags & _Py_MEMORYVIEW_RELEASED)
            return 0;  /* a released view: counted as 0, like the Python reference */
        return PyMemoryView_GET_BUFFER(item)->len;
    }
    if (tp == PayloadType) {  /* a zero-copy payload: its size is a plain int slot */
        PyObject *v = SLOT(item, p_nbytes);
        if (v != NULL && PyLong_CheckExact(v)) {
            Py_ssize_t r = PyLong_AsSsize_t(v);
            if (r >= 0)
                return r;
            PyErr_Clear();
        }
        return -2;
    }
    if (!Py_IS_TYPE(tp, &PyType_Type))
        return -2;  /* a custom metaclass may hash in Python: let Python look it up */
    int r = PySet_Contains(sized_set, (PyObject *)tp);
    if (r < 0)
        return -1;
    return r ? -2 : 0;
}

static inline int
deque_push(PyObject *dq, PyObject *x)
{
    PyObject *args[2] = {dq, x};
    PyObject *r = PyObject_Vectorcall(deque_append, args, 2, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static inline PyObject *
deque_pop(PyObject *dq)
{
    PyObject *args[1] = {dq};
    return PyObject_Vectorcall(deque_popleft, args, 1, NULL);
}

static PyObject *s_report;

/* Give an item evicted by DROP_OLDEST to on_undelivered (outside the section); consumes it. */
static int
report_dropped(PyObject *ch, PyObject *old)
{
    int rc = 0;
    PyObject *h = SLOT(ch, c_on_undelivered);
    /* a payload is also released (and counted) by Channel._report, handler or not */
    if ((h != NULL && h != Py_None) || (PayloadType != NULL && Py_IS_TYPE(old, PayloadType))) {
        PyObject *items = PyTuple_Pack(1, old);
        PyObject *r = items ? PyObject_CallMethodOneArg(ch, s_report, items) : NULL;
        Py_XDECREF(items);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    }
    Py_DECREF(old);
    return rc;
}

/* Wake the owner of a completed ticket (outside the section). */
static int
wake(PyObject *t)
{
    PyObject *w = SLOT(t, t_waker);
    if (w != NULL && Py_IS_TYPE(w, TaskType)) {
        PyObject *r = SLOT(w, k_rt);
        slot_set(w, k_state, s_READY);
        if (deque_push(SLOT(r, r_ready), w) < 0)
            return -1;
        if (SLOT(r, r_asleep) == Py_True) {
            PyObject *res = PyObject_CallMethodNoArgs(r, s_poke);
            if (res == NULL)
                return -1;
            Py_DECREF(res);
        }
        return 0;
    }
    if (w == NULL || w == Py_None)
        return 0;
    PyObject *res = PyObject_CallMethodOneArg(w, s_wake_waker, t);  /* Ticket._wake, inlined */
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

/* ---- the awaitable --------------------------------------------------------------------------- */
enum { OP_START, OP_PARKED, OP_YIELDED, OP_DELEGATE, OP_DONE };

typedef struct {
    PyObject_HEAD
    PyObject *ch;
    PyObject *item;    /* send: the item; recv: the value to return after a budget yield */
    PyObject *rt;
    PyObject *task;
    PyObject *t;       /* the ticket we parked on */
    PyObject *sub;     /* the Python slow coroutine we delegate to */
    int state;
    int is_send;
    int is_anext;      /* __anext__: ChannelClosed becomes StopAsyncIteration */
    int running;       /* inside op_send/throw/close: refuse re-entry (another thread or a
                          callback driving the same op), as a coroutine would */
} OpObject;

static PyTypeObject OpType;

static int
op_traverse(OpObject *op, visitproc visit, void *arg)
{
    Py_VISIT(op->ch);
    Py_VISIT(op->item);
    Py_VISIT(op->rt);
    Py_VISIT(op->task);
    Py_VISIT(op->t);
    Py_VISIT(op->sub);
    return 0;
}

static int
op_clear(OpObject *op)
{
    Py_CLEAR(op->ch);
    Py_CLEAR(op->item);
    Py_CLEAR(op->rt);
    Py_CLEAR(op->task);
    Py_CLEAR(op->t);
    Py_CLEAR(op->sub);
    return 0;
}

static void
op_dealloc(OpObject *op)
{
    PyObject_GC_UnTrack(op);
    op_clear(op);
    PyObject_GC_Del(op);
}

static PySendResult
op_delegate(OpObject *op, PyObject **result)
{
    /* The slow path finds the running task itself (and checks its cancellation). */
    PyObject *task = Py_None;
    if (op->is_send)
        op->sub = PyObject_CallMethodObjArgs(op->ch, s_send_slow, op->item, Py_None, Py_None,
                                             task, NULL);
    else
        op->sub = PyObject_CallMethodObjArgs(op->ch, s_recv_slow, Py_None, Py_None, task, NULL);
    if (op->sub == NULL) {
        op->state = OP_DONE;
        return PYGEN_ERROR;
    }
    op->state = OP_DELEGATE;
    return PyIter_Send(op->sub, Py_None, result);
}

/* Budget: returns 1 if the task must yield now (a schedule point), 0 if not, -1 on error. */
static inline int
spend_budget(PyObject *task)
{
    Py_ssize_t b = slot_ssize(task, k_budget);
    if (b < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "kcoro._speedups: bad task budget");
        return -1;
    }
    if (b > 1)
        return slot_add(task, k_budget, -1) < 0 ? -1 : 0;
    return 1;  /* the runtime resets the budget when it steps the task again */
}

static inline void
stamp(PyObject *ch, PyObject *rt)
{
    PyObject *now = SLOT(rt, r_now_ns);
    if (now == NULL)
        return;
    slot_set(ch, c_last_op_ns, now);
    PyObject *first = SLOT(ch, c_first_op_ns);
    if (first == NULL || (PyLong_CheckExact(first) && PyLong_AsSsize_t(first) == 0))
        slot_set(ch, c_first_op_ns, now);
}

/* Common prologue: the running task if the fast path may run, else NULL (delegate). */
static inline PyObject *
fast_task(OpObject *op)
{
    PyObject *task = SLOT(op->rt, r_current);
    if (task == NULL || !Py_IS_TYPE(task, TaskType) || SLOT(task, k_rt) != op->rt)
        return NULL;
    PyObject *scope = SLOT(task, k_scope);
    if (scope == NULL || SLOT(scope, s_eff) != Py_False)
        return NULL;  /* cancelled: the slow path raises Cancelled */
    if (PyDict_GET_SIZE(owner_dict) != 0)
        return NULL;  /* a Python thread is inside a kernel section */
    return task;
}

enum { ST_SLOW, ST_OK, ST_PARKED, ST_ERROR };

/* The send section shared by every fast path: hand ``item`` to the first parked plain receiver,
 * or append it to a buffer with room, or evict the oldest item of a full DROP_OLDEST/conflated
 * buffer (``*dropped``, owned: the caller reports it), or (if ``t`` is a reusable ticket) park
 * ``t`` as a sender.  ``nb`` is the item's byte count (builtin_nbytes >= 0).  On ST_OK ``*x`` is
 * a ticket to wake (owned) or NULL.  No Python code runs here. */
static int
put_section(PyObject *ch, PyObject *item, Py_ssize_t nb, PyObject *t, PyObject **x,
            PyObject **dropped)
{
    *x = NULL;
    *dropped = NULL;
    Py_ssize_t nrecv = slot_ssize(ch, c_nrecv);
    if (nrecv > 0) {
        PyObject *e = PySequence_GetItem(SLOT(ch, c_recvq), 0);
        if (e == NULL)
            return ST_ERROR;
        if (!(Py_IS_TYPE(e, TicketType) && SLOT(e, t_state) == i_PARKED
              && SLOT(e, t_linked) == Py_True)) {
            Py_DECREF(e);
            return ST_SLOW;  /* a select entry or a cancelled waiter: Python handles it */
        }
        PyObject *popped = deque_pop(SLOT(ch, c_recvq));
        if (popped == NULL)
            goto error_e;
        Py_DECREF(popped);
        slot_set(e, t_linked, Py_False);
        if (slot_add(ch, c_nrecv, -1) < 0)
            goto error_e;
        slot_set(e, t_state, i_READY);
        slot_set(e, t_payload, item);
        if (slot_add(ch, c_recvs, 1) < 0 || (nb && slot_add(ch, c_bytes_recv, nb) < 0))
            goto error_e;
        *x = e;
        return ST_OK;
    error_e:
        Py_DECREF(e);
        return ST_ERROR;
    }
    if (nrecv < 0 || SLOT(ch, c_closed) != Py_False)
        return ST_SLOW;
    PyObject *buf = SLOT(ch, c_buf);
    Py_ssize_t n = PyObject_Size(buf);
    Py_ssize_t cap = slot_ssize(ch, c_cap);
    if (n < 0 || (cap < 0 && PyErr_Occurred()))
        return ST_ERROR;
    if (n < cap) {
        if (deque_push(buf, item) < 0)
            return ST_ERROR;
        n += 1;
        if (n > slot_ssize(ch, c_peak)) {
            PyObject *v = PyLong_FromSsize_t(n);
            if (v == NULL)
                return ST_ERROR;
            slot_set(ch, c_peak, v);
            Py_DECREF(v);
        }
        if (nb && slot_add(ch, c_buf_bytes, nb) < 0)
            return ST_ERROR;
        return ST_OK;
    }
    Py_ssize_t drop = slot_ssize(ch, c_drop);
    if (drop == 1 && n > 0) {  /* DROP_OLDEST / conflated: evict the head, keep the new item */
        PyObject *head = PySequence_GetItem(buf, 0);
        if (head == NULL)
            return ST_ERROR;
        Py_ssize_t nb_old = builtin_nbytes(head);
        Py_DECREF(head);
        if (nb_old < 0)
            return PyErr_Occurred() ? ST_ERROR : ST_SLOW;  /* e.g. a payload: Python releases it */
        PyObject *old = deque_pop(buf);
        if (old == NULL)
            return ST_ERROR;
        if (deque_push(buf, item) < 0 || slot_add(ch, c_undelivered, 1) < 0
                || (nb - nb_old && slot_add(ch, c_buf_bytes, nb - nb_old) < 0)
                || (nb_old && slot_add(ch, c_lost_bytes, nb_old) < 0)) {
            Py_DECREF(old);
            return ST_ERROR;
        }
        *dropped = old;
        return ST_OK;
    }
    if (t == NULL || drop != 0)
        return ST_SLOW;  /* full: wait in Python, or apply DROP_LATEST */
    slot_set(t, t_state, i_PARKED);
    slot_set(t, t_item, item);
    slot_set(t, t_linked, Py_True);
    if (deque_push(SLOT(ch, c_sendq), t) < 0 || slot_add(ch, c_nsend, 1) < 0)
        return ST_ERROR;
    return ST_PARKED;
}

/* The receive section: take from the first parked plain sender (rendezvous) or the buffer
 * (refilling it from a parked sender), or park ``t`` as a receiver.  Returns the item (owned)
 * with *st == ST_OK, else NULL with *st set.  On ST_OK ``*x`` is a sender ticket to wake. */
static PyObject *
get_section(PyObject *ch, PyObject *t, PyObject **x, int *st)
{
    *x = NULL;
    PyObject *buf = SLOT(ch, c_buf);
    Py_ssize_t n = PyObject_Size(buf);
    Py_ssize_t nsend = slot_ssize(ch, c_nsend);
    PyObject *item = NULL;
    *st = ST_ERROR;
    if (n < 0 || nsend < 0)
        return NULL;
    if (nsend > 0) {
        PyObject *e = PySequence_GetItem(SLOT(ch, c_sendq), 0);
        if (e == NULL)
            return NULL;
        if (!(Py_IS_TYPE(e, TicketType) && SLOT(e, t_state) == i_PARKED
              && SLOT(e, t_linked) == Py_True)) {
            Py_DECREF(e);
            *st = ST_SLOW;
            return NULL;
        }
        PyObject *moved = SLOT(e, t_item);
        Py_ssize_t nb_moved = builtin_nbytes(moved), nb_head = 0;
        if (n > 0) {
            PyObject *head = PySequence_GetItem(buf, 0);
            if (head == NULL)
                goto error_e;
            nb_head = builtin_nbytes(head);
            Py_DECREF(head);
        }
        if (nb_moved < 0 || nb_head < 0) {  /* a registered sized type: Python counts it */
            Py_DECREF(e);
            if (!PyErr_Occurred())
                *st = ST_SLOW;
            return NULL;
        }
        PyObject *popped = deque_pop(SLOT(ch, c_sendq));
        if (popped == NULL)
            goto error_e;
        Py_DECREF(popped);
        slot_set(e, t_linked, Py_False);
        if (slot_add(ch, c_nsend, -1) < 0)
            goto error_e;
        slot_set(e, t_state, i_READY);
        Py_INCREF(moved);  /* keeps the item alive once the ticket lets go of it */
        slot_set(e, t_item, Py_None);
        if (n > 0) {
            item = deque_pop(buf);
            int bad = item == NULL || deque_push(buf, moved) < 0;
            Py_DECREF(moved);
            if (bad || (nb_head && slot_add(ch, c_buf_bytes, -nb_head) < 0)
                    || (nb_moved && slot_add(ch, c_buf_bytes, nb_moved) < 0))
                goto error_item;
        }
        else {
            item = moved;
            nb_head = nb_moved;
        }
        if (slot_add(ch, c_recvs, 1) < 0 || (nb_head && slot_add(ch, c_bytes_recv, nb_head) < 0))
            goto error_item;
        *x = e;
        *st = ST_OK;
        return item;
    error_item:
        Py_XDECREF(item);
    error_e:
        Py_DECREF(e);
        return NULL;
    }
    if (n > 0) {
        PyObject *head = PySequence_GetItem(buf, 0);
        if (head == NULL)
            return NULL;
        Py_ssize_t nb = builtin_nbytes(head);
        Py_DECREF(head);
        if (nb < 0) {
            if (!PyErr_Occurred())
                *st = ST_SLOW;
            return NULL;
        }
        item = deque_pop(buf);
        if (item == NULL)
            return NULL;
        if (slot_add(ch, c_recvs, 1) < 0
                || (nb && (slot_add(ch, c_bytes_recv, nb) < 0
                           || slot_add(ch, c_buf_bytes, -nb) < 0))) {
            Py_DECREF(item);
            return NULL;
        }
        *st = ST_OK;
        return item;
    }
    if (t == NULL || SLOT(ch, c_closed) != Py_False) {
        *st = ST_SLOW;
        return NULL;
    }
    slot_set(t, t_state, i_PARKED);
    slot_set(t, t_linked, Py_True);
    if (deque_push(SLOT(ch, c_recvq), t) < 0 || slot_add(ch, c_nrecv, 1) < 0)
        return NULL;
    *st = ST_PARKED;
    return NULL;
}

/* The task's reusable ticket, if its last wait ended by a hand-off (nothing can still
 * reference it), else NULL (the slow path allocates a fresh one). */
static inline PyObject *
reusable_ticket(PyObject *task)
{
    PyObject *t = SLOT(task, k_tk);
    if (t != NULL && Py_IS_TYPE(t, TicketType) && SLOT(t, t_state) == i_COMPLETED)
        return t;
    return NULL;
}

static PySendResult
op_parked(OpObject *op, PyObject *task, PyObject *t, PyObject **result)
{
    slot_set(task, k_on, op->ch);
    Py_INCREF(t);
    op->t = t;
    op->state = OP_PARKED;
    Py_INCREF(t);
    *result = t;
    return PYGEN_NEXT;
}

/* After a completed fast path: wake the partner, spend budget, return ``value`` (owned). */
static PySendResult
op_done(OpObject *op, PyObject *task, PyObject *x, PyObject *value, PyObject **result)
{
    if (x != NULL) {
        int r = wake(x);
        Py_DECREF(x);
        if (r < 0) {
            Py_DECREF(value);
            return PYGEN_ERROR;
        }
    }
    int y = spend_budget(task);
    if (y < 0) {
        Py_DECREF(value);
        return PYGEN_ERROR;
    }
    if (y) {  /* a schedule point: yield None, return ``value`` when resumed */
        Py_XSETREF(op->item, value);
        op->state = OP_YIELDED;
        Py_INCREF(Py_None);
        *result = Py_None;
        return PYGEN_NEXT;
    }
    op->state = OP_DONE;
    *result = value;
    return PYGEN_RETURN;
}

/* A caller that is not a kcoro task (asyncio): complete at once if the section can, without
 * yielding (asyncio's convention); anything else, including "no loop is running", goes to the
 * Python slow path, which parks on an asyncio future or raises the clear error. */
static int may_block(void);
static void stamp_now(PyObject *ch);

/* Complete a send or receive in one section if it can be done at once (no waiting), as the
 * caller's Python twin would: stamp, report an evicted item, wake the partner.  Anything else --
 * full, empty, closed, a drop to decide, a size that needs Python, a Python section in progress
 * in another thread -- changes nothing and is left to the Python path.
 * send_now: 1 done, 0 left to Python, -1 error.
 * recv_now: the item (new reference); NULL with *st == ST_SLOW (left to Python) or ST_ERROR. */
static int
send_now(PyObject *ch, PyObject *item)
{
    PyObject *x, *old;
    if (PyDict_GET_SIZE(owner_dict) != 0)
        return 0;
    Py_ssize_t nb = builtin_nbytes(item);
    if (nb == -1)
        return -1;
    if (nb == -2 || PyDict_GET_SIZE(owner_dict) != 0)  /* re-checked: sizing may run Python */
        return 0;
    int st = put_section(ch, item, nb, NULL, &x, &old);
    if (st == ST_ERROR)
        return -1;
    if (st != ST_OK)
        return 0;
    stamp_now(ch);  /* inside the section, before any Python code runs */
    if (old != NULL && report_dropped(ch, old) < 0) {
        Py_XDECREF(x);
        return -1;
    }
    if (x != NULL) {
        int r = wake(x);
        Py_DECREF(x);
        if (r < 0)
            return -1;
    }
    return 1;
}

static PyObject *
recv_now(PyObject *ch, int *st)
{
    PyObject *x;
    if (PyDict_GET_SIZE(owner_dict) != 0) {
        *st = ST_SLOW;
        return NULL;
    }
    PyObject *item = get_section(ch, NULL, &x, st);
    if (*st != ST_OK) {
        if (*st != ST_ERROR)
            *st = ST_SLOW;
        return NULL;
    }
    stamp_now(ch);
    if (x != NULL) {
        int r = wake(x);
        Py_DECREF(x);
        if (r < 0) {
            Py_DECREF(item);
            *st = ST_ERROR;
            return NULL;
        }
    }
    return item;
}

/* The running asyncio loop (a new reference), or NULL (none, or a kcoro section is held). */
static PyObject *
foreign_loop(void)
{
    if (PyDict_GET_SIZE(owner_dict) != 0)
        return NULL;
    PyObject *loop = PyObject_CallNoArgs(get_running_loop);
    if (loop == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (loop == Py_None) {
        Py_DECREF(loop);
        return NULL;
    }
    return loop;
}

/* The asyncio task must wait (or the case is not inlined): ``Channel._send_foreign`` /
 * ``_recv_foreign`` try once more and register an asyncio waiter in one section. */
static PySendResult
op_delegate_foreign(OpObject *op, PyObject *loop, PyObject **result)
{
    if (op->is_send)
        op->sub = PyObject_CallMethodObjArgs(op->ch, s_send_foreign, op->item, loop, NULL);
    else
        op->sub = PyObject_CallMethodObjArgs(op->ch, s_recv_foreign, loop, NULL);
    Py_DECREF(loop);
    if (op->sub == NULL) {
        op->state = OP_DONE;
        return PYGEN_ERROR;
    }
    op->state = OP_DELEGATE;
    return PyIter_Send(op->sub, Py_None, result);
}

static PySendResult
foreign_fast(OpObject *op, PyObject **result)
{
    PyObject *loop = foreign_loop();
    if (loop == NULL)
        return op_delegate(op, result);
    PyObject *item;
    if (op->is_send) {
        int r = send_now(op->ch, op->item);
        if (r < 0) {
            Py_DECREF(loop);
            return PYGEN_ERROR;
        }
        if (r == 0)
            return op_delegate_foreign(op, loop, result);
        item = Py_NewRef(Py_None);
    }
    else {
        int st;
        item = recv_now(op->ch, &st);
        if (item == NULL) {
            if (st == ST_ERROR) {
                Py_DECREF(loop);
                return PYGEN_ERROR;
            }
            return op_delegate_foreign(op, loop, result);
        }
    }
    Py_DECREF(loop);
    op->state = OP_DONE;
    *result = item;
    return PYGEN_RETURN;
}

static PySendResult
send_fast(OpObject *op, PyObject **result)
{
    PyObject *task = fast_task(op);
    if (task == NULL)
        return op_delegate(op, result);
    Py_INCREF(task);
    Py_XSETREF(op->task, task);
    Py_ssize_t nb = builtin_nbytes(op->item);
    if (nb == -1)
        return PYGEN_ERROR;
    if (nb == -2)
        return op_delegate(op, result);
    PyObject *x, *old, *t = reusable_ticket(task);
    int st = put_section(op->ch, op->item, nb, t, &x, &old);
    if (st == ST_ERROR)
        return PYGEN_ERROR;
    if (st == ST_SLOW)
        return op_delegate(op, result);
    stamp(op->ch, op->rt);  /* still inside the section: before any Python code runs */
    if (old != NULL && report_dropped(op->ch, old) < 0)
        return PYGEN_ERROR;  /* after the send happened, as the Python path raises */
    if (st == ST_PARKED)
        return op_parked(op, task, t, result);
    Py_CLEAR(op->item);  /* a send returns None; op->item is reused by a budget yield */
    Py_INCREF(Py_None);
    return op_done(op, task, x, Py_None, result);
}

static PySendResult
recv_fast(OpObject *op, PyObject **result)
{
    PyObject *task = fast_task(op);
    if (task == NULL)
        return op_delegate(op, result);
    Py_INCREF(task);
    Py_XSETREF(op->task, task);
    PyObject *x, *t = reusable_ticket(task);
    int st;
    PyObject *item = get_section(op->ch, t, &x, &st);
    if (st == ST_ERROR)
        return PYGEN_ERROR;
    if (st == ST_SLOW)
        return op_delegate(op, result);
    stamp(op->ch, op->rt);
    if (st == ST_PARKED)
        return op_parked(op, task, t, result);
    return op_done(op, task, x, item, result);
}

static PySendResult
op_send_inner(OpObject *op, PyObject *value, PyObject **result)
{
    switch (op->state) {
    case OP_START: {
        /* The runtime of the thread driving the op now (not the one that created it). */
        PyObject *rt = (PyObject *)PyThread_tss_get(&rt_key);
        if (rt == NULL)
            return foreign_fast(op, result);
        Py_INCREF(rt);
        Py_XSETREF(op->rt, rt);
        return op->is_send ? send_fast(op, result) : recv_fast(op, result);
    }
    case OP_PARKED: {
        PyObject *t = op->t;
        if (SLOT(t, t_state) == i_READY) {
            slot_set(t, t_state, i_COMPLETED);  /* READY is left only by its waiter */
            op->state = OP_DONE;
            if (op->is_send) {
                Py_INCREF(Py_None);
                *result = Py_None;
            }
            else {
                PyObject *v = SLOT(t, t_payload);
                Py_INCREF(v);
                slot_set(t, t_payload, Py_None);  /* v still references it */
                *result = v;
            }
            return PYGEN_RETURN;
        }
        /* cancelled, timed out or closed: Python settles it and raises */
        op->state = OP_DONE;
        PyObject *r = PyObject_CallMethodObjArgs(op->ch, s_park_failed, t,
                                                 op->is_send ? Py_True : Py_False,
                                                 op->task, NULL);
        if (r == NULL)
            return PYGEN_ERROR;
        *result = r;
        return PYGEN_RETURN;
    }
    case OP_YIELDED:
        op->state = OP_DONE;
        if (op->item == NULL) {
            Py_INCREF(Py_None);
            *result = Py_None;
        }
        else {
            *result = op->item;
            op->item = NULL;
        }
        return PYGEN_RETURN;
    case OP_DELEGATE:
        return PyIter_Send(op->sub, value, result);
    default:
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an already awaited channel operation");
        return PYGEN_ERROR;
    }
}

static void
anext_closed(OpObject *op)
{
    if (op->is_anext && PyErr_ExceptionMatches(ChannelClosedType)) {
        PyErr_Clear();
        PyErr_SetNone(PyExc_StopAsyncIteration);
    }
}

static PySendResult
op_send(OpObject *op, PyObject *value, PyObject **result)
{
    *result = NULL;
    if (op->running) {
        PyErr_SetString(PyExc_ValueError, "channel operation already executing");
        return PYGEN_ERROR;
    }
    op->running = 1;
    PySendResult r = op_send_inner(op, value, result);
    op->running = 0;
    if (r == PYGEN_ERROR) {
        *result = NULL;
        anext_closed(op);
    }
    return r;
}

static PyObject *
op_iternext(OpObject *op)
{
    PyObject *result;
    PySendResult r = op_send(op, Py_None, &result);
    if (r == PYGEN_NEXT)
        return result;
    if (r == PYGEN_RETURN) {
        if (result != Py_None)
            _PyGen_SetStopIterationValue(result);
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *
op_await(PyObject *op)
{
    Py_INCREF(op);
    return op;
}

static PyObject *
op_send_method(OpObject *op, PyObject *value)
{
    PyObject *result;
    PySendResult r = op_send(op, value, &result);
    if (r == PYGEN_NEXT)
        return result;
    if (r == PYGEN_RETURN) {
        _PyGen_SetStopIterationValue(result);
        Py_DECREF(result);
    }
    return NULL;
}

static PyObject *s_abandon;

/* The awaiting coroutine is being closed or thrown into while we are parked: withdraw the wait
 * (Channel._abandon) so no partner hands anything to it. */
static int
op_abandon(OpObject *op)
{
    if (op->state == OP_YIELDED) {  /* a receive that completed, then yielded: report it */
        op->state = OP_DONE;
        if (op->is_send || op->item == NULL)
            return 0;
        PyObject *items = PyTuple_Pack(1, op->item);
        Py_CLEAR(op->item);
        PyObject *r = items ? PyObject_CallMethodOneArg(op->ch, s_report, items) : NULL;
        Py_XDECREF(items);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    if (op->state != OP_PARKED)
        return 0;
    op->state = OP_DONE;
    PyObject *r = PyObject_CallMethodObjArgs(op->ch, s_abandon, op->t,
                                             op->is_send ? Py_True : Py_False, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *op_throw_inner(OpObject *op, PyObject *const *args, Py_ssize_t nargs);

static PyObject *
op_throw(OpObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (op->running) {
        PyErr_SetString(PyExc_ValueError, "channel operation already executing");
        return NULL;
    }
    op->running = 1;
    PyObject *r = op_throw_inner(op, args, nargs);
    op->running = 0;
    if (r == NULL)
        anext_closed(op);
    return r;
}

static PyObject *
op_throw_inner(OpObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    if (op_abandon(op) < 0)
        return NULL;
    if (op->state == OP_DELEGATE && op->sub != NULL) {
        PyObject *meth = PyObject_GetAttrString(op->sub, "throw");
        if (meth == NULL)
            return NULL;
        PyObject *r = PyObject_Vectorcall(meth, args, nargs, NULL);
        Py_DECREF(meth);
        return r;
    }
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError, "throw expected at least 1 argument");
        return NULL;
    }
    PyObject *typ = args[0];
    if (PyExceptionInstance_Check(typ))
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    else
        PyErr_SetObject(typ, nargs > 1 ? args[1] : Py_None);
    return NULL;
}

static PyObject *
op_close(OpObject *op, PyObject *Py_UNUSED(ignored))
{
    if (op->running) {
        PyErr_SetString(PyExc_ValueError, "channel operation already executing");
        return NULL;
    }
    if (op_abandon(op) < 0)
        return NULL;
    if (op->state == OP_DELEGATE && op->sub != NULL)
        return PyObject_CallMethod(op->sub, "close", NULL);
    Py_RETURN_NONE;
}

static PyMethodDef op_methods[] = {
    {"send", (PyCFunction)op_send_method, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))op_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)op_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods op_as_async = {
    .am_await = op_await,
    .am_send = (sendfunc)op_send,
};

static PyTypeObject OpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kcoro._speedups.ChannelOp",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An awaitable channel operation (send or recv) of a kcoro task.",
    .tp_dealloc = (destructor)op_dealloc,
    .tp_traverse = (traverseproc)op_traverse,
    .tp_clear = (inquiry)op_clear,
    .tp_as_async = &op_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)op_iternext,
    .tp_methods = op_methods,
};

static PyObject *
new_op(PyObject *ch, PyObject *item, int is_send, int is_anext)
{
    OpObject *op = PyObject_GC_New(OpObject, &OpType);
    if (op == NULL)
        return NULL;
    Py_INCREF(ch);
    op->ch = ch;
    Py_XINCREF(item);
    op->item = item;
    op->rt = NULL;  /* set when the op first runs, from the thread that drives it */
    op->running = 0;
    op->task = NULL;
    op->t = NULL;
    op->sub = NULL;
    op->state = OP_START;
    op->is_send = is_send;
    op->is_anext = is_anext;
    PyObject_GC_Track(op);
    return (PyObject *)op;
}

/* ---- ChanOps: the base class whose send/recv Channel inherits ---------------------------------- */
/* Arguments of send(item, *, timeout=None, cancel=None) (npos 1: *item is set, also from an
 * ``item=`` keyword) and recv(*, timeout=None, cancel=None) (npos 0). */
static int
parse_kw(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, Py_ssize_t npos,
         const char *fname, PyObject **item, PyObject **timeout, PyObject **cancel)
{
    *timeout = Py_None;
    *cancel = Py_None;
    if (item != NULL)
        *item = nargs >= 1 ? args[0] : NULL;
    if (nargs > npos) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd positional argument%s (%zd given)", fname,
                     npos, npos == 1 ? "" : "s", nargs);
        return -1;
    }
    if (kwnames != NULL) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (PyUnicode_CompareWithASCIIString(k, "timeout") == 0)
                *timeout = args[nargs + i];
            else if (PyUnicode_CompareWithASCIIString(k, "cancel") == 0)
                *cancel = args[nargs + i];
            else if (item != NULL && nargs == 0 && PyUnicode_CompareWithASCIIString(k, "item") == 0)
                *item = args[nargs + i];
            else {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, k);
                return -1;
            }
        }
    }
    if (item != NULL && *item == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: 'item'",
                     fname);
        return -1;
    }
    return 0;
}

/* The methods read Channel slots by offset: refuse anything that is not a configured Channel. */
static int
check_channel(PyObject *self)
{
    if (!configured || !PyObject_TypeCheck(self, ChannelType)) {
        PyErr_Format(PyExc_TypeError, "kcoro._speedups.ChanOps methods need a kcoro.Channel, "
                     "not %.100s", Py_TYPE(self)->tp_name);
        return -1;
    }
    return 0;
}

static PyObject *
chanops_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *item, *timeout, *cancel;
    if (check_channel(self) < 0
            || parse_kw(args, nargs, kwnames, 1, "send", &item, &timeout, &cancel) < 0)
        return NULL;
    if (timeout != Py_None || cancel != Py_None)
        return PyObject_CallMethodObjArgs(self, s_send_any, item, timeout, cancel, NULL);
    return new_op(self, item, 1, 0);
}

static PyObject *
chanops_recv(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout, *cancel;
    if (check_channel(self) < 0
            || parse_kw(args, nargs, kwnames, 0, "recv", NULL, &timeout, &cancel) < 0)
        return NULL;
    if (timeout != Py_None || cancel != Py_None)
        return PyObject_CallMethodObjArgs(self, s_recv_any, timeout, cancel, NULL);
    return new_op(self, NULL, 0, 0);
}

static PyObject *
chanops_anext(PyObject *self)
{
    if (check_channel(self) < 0)
        return NULL;
    return new_op(self, NULL, 0, 1);
}

/* ---- blocking twins for OS threads ---------------------------------------------------------- */
static PyObject *s_send_blocking_slow, *s_recv_blocking_slow;

/* 1 if this thread may block here (no kcoro runtime, no running asyncio loop); 0 lets the Python
 * path raise its clear error (or handle the case). */
static int
may_block(void)
{
    if (!configured || PyThread_tss_get(&rt_key) != NULL)
        return 0;
    PyObject *loop = PyObject_CallNoArgs(get_running_loop);
    if (loop == NULL) {
        PyErr_Clear();
        return 0;
    }
    int ok = loop == Py_None;
    Py_DECREF(loop);
    return ok;
}

static void
stamp_now(PyObject *ch)
{
    PyObject *now = PyLong_FromLongLong((long long)_PyTime_GetMonotonicClock());
    if (now == NULL) {
        PyErr_Clear();
        return;
    }
    slot_set(ch, c_last_op_ns, now);
    PyObject *first = SLOT(ch, c_first_op_ns);
    if (first == NULL || (PyLong_CheckExact(first) && PyLong_AsSsize_t(first) == 0))
        slot_set(ch, c_first_op_ns, now);
    Py_DECREF(now);
}

static PyObject *
chanops_send_blocking(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *item, *timeout, *cancel;
    if (check_channel(self) < 0
            || parse_kw(args, nargs, kwnames, 1, "send_blocking", &item, &timeout, &cancel) < 0)
        return NULL;
    if (timeout == Py_None && cancel == Py_None && may_block()) {
        int r = send_now(self, item);
        if (r < 0)
            return NULL;
        if (r)
            Py_RETURN_NONE;
    }
    return PyObject_CallMethodObjArgs(self, s_send_blocking_slow, item, timeout, cancel, NULL);
}

static PyObject *
chanops_recv_blocking(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *timeout, *cancel;
    if (check_channel(self) < 0
            || parse_kw(args, nargs, kwnames, 0, "recv_blocking", NULL, &timeout, &cancel) < 0)
        return NULL;
    if (timeout == Py_None && cancel == Py_None && may_block()) {
        int st;
        PyObject *item = recv_now(self, &st);
        if (item != NULL || st == ST_ERROR)
            return item;
    }
    return PyObject_CallMethodObjArgs(self, s_recv_blocking_slow, timeout, cancel, NULL);
}

/* try_send / try_recv: send_now / recv_now; every other outcome goes to
 * Channel._try_send_slow / _try_recv_slow, which redo the attempt, count the failure and raise
 * (the C attempt changed nothing). */
static PyObject *
chanops_try_send(PyObject *self, PyObject *item)
{
    if (check_channel(self) < 0)
        return NULL;
    int r = send_now(self, item);
    if (r < 0)
        return NULL;
    if (r)
        Py_RETURN_TRUE;
    return PyObject_CallMethodOneArg(self, s_try_send_slow, item);
}

static PyObject *
chanops_try_recv(PyObject *self, PyObject *unused)
{
    if (check_channel(self) < 0)
        return NULL;
    int st;
    PyObject *item = recv_now(self, &st);
    if (item != NULL || st == ST_ERROR)
        return item;
    return PyObject_CallMethodNoArgs(self, s_try_recv_slow);
}

static PyMethodDef chanops_methods[] = {
    {"try_send", (PyCFunction)chanops_try_send, METH_O,
     "try_send(item)\n--\n\n"
     "Send without waiting.  WouldBlock if full, ChannelClosed if closed.  True if the item\n"
     "was accepted; False only for DROP_LATEST when the buffer is full (not reported: the\n"
     "caller still owns the item)."},
    {"try_recv", (PyCFunction)chanops_try_recv, METH_NOARGS,
     "try_recv()\n--\n\n"
     "Receive without waiting: WouldBlock if empty, ChannelClosed if closed and drained."},
    {"send_blocking", (PyCFunction)(void (*)(void))chanops_send_blocking,
     METH_FASTCALL | METH_KEYWORDS,
     "send_blocking(item, *, timeout=None, cancel=None)\n--\n\n"
     "send for a plain OS thread (RuntimeError from a thread running a loop)."},
    {"recv_blocking", (PyCFunction)(void (*)(void))chanops_recv_blocking,
     METH_FASTCALL | METH_KEYWORDS,
     "recv_blocking(*, timeout=None, cancel=None)\n--\n\n"
     "recv for a plain OS thread (RuntimeError from a thread running a loop)."},
    {"send", (PyCFunction)(void (*)(void))chanops_send, METH_FASTCALL | METH_KEYWORDS,
     "send(item, *, timeout=None, cancel=None)\n--\n\n"
     "Send item; park while the channel is full (rendezvous: until a receiver takes it).\n"
     "timeout: None waits forever, 0 is a try (WouldBlock), > 0 is bounded (TimeoutError).\n"
     "cancel: a CancelToken (OperationCancelled)."},
    {"recv", (PyCFunction)(void (*)(void))chanops_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv(*, timeout=None, cancel=None)\n--\n\n"
     "Receive the next item; park while there is none.  ChannelClosed once closed and\n"
     "drained.  timeout/cancel as for send."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, "See PEP 585"},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods chanops_as_async = {
    .am_anext = (unaryfunc)chanops_anext,
};

static PyTypeObject ChanOpsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kcoro._speedups.ChanOps",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "C fast paths of Channel.send/recv (base class of kcoro.Channel).",
    .tp_methods = chanops_methods,
    .tp_as_async = &chanops_as_async,
    .tp_new = PyType_GenericNew,
};

/* ---- the runtime's inner loop ---------------------------------------------------------------- */
static Py_ssize_t k_coro, k_parked;
static Py_ssize_t r_parks;
static PyObject *s_PARKED_str, *budget_full;

/* run_steps(rt, k) -> (steps, kind, task, value)
 * Steps up to k ready tasks (Runtime.run_until_complete's inner loop): a schedule point requeues
 * the task, a ticket parks it.  It returns early (kind != 0) when Python must handle a step:
 * 1 the task returned ``value``, 2 it raised ``value``, 3 it yielded something that is neither
 * None nor a ticket.  kind == 0: k steps done or nothing ready. */
static PyObject *
run_steps(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "run_steps(rt, k)");
        return NULL;
    }
    PyObject *rt = args[0];
    if (!configured || !PyObject_TypeCheck(rt, RuntimeType)) {
        PyErr_SetString(PyExc_TypeError, "run_steps() needs a kcoro Runtime");
        return NULL;
    }
    Py_ssize_t k = PyLong_AsSsize_t(args[1]);
    if (k < 0 && PyErr_Occurred())
        return NULL;
    PyObject *ready = SLOT(rt, r_ready);
    Py_ssize_t steps = 0;
    int kind = 0;
    PyObject *task = NULL, *value = NULL;
    while (steps < k) {
        Py_ssize_t nready = PyObject_Size(ready);
        if (nready < 0)
            goto error;
        if (nready == 0)
            break;
        task = deque_pop(ready);
        if (task == NULL)
            goto error;
        steps++;
        slot_set(rt, r_current, task);
        slot_set(task, k_budget, budget_full);
        PyObject *coro = SLOT(task, k_coro);
        if (coro == NULL || coro == Py_None) {  /* finished meanwhile */
            Py_CLEAR(task);
            continue;
        }
        PyObject *y = NULL;
        Py_INCREF(coro);
        PySendResult r = PyIter_Send(coro, Py_None, &y);
        Py_DECREF(coro);
        if (r == PYGEN_NEXT) {
            if (y == Py_None) {
                Py_DECREF(y);
                slot_set(task, k_state, s_READY);
                if (deque_push(ready, task) < 0)
                    goto error;
                Py_CLEAR(task);
                continue;
            }
            if (Py_IS_TYPE(y, TicketType)) {
                slot_set(task, k_state, s_PARKED_str);
                slot_set(task, k_parked, y);  /* may go stale: cancelling a finished ticket is
                                                 a no-op */
                Py_DECREF(y);
                if (slot_add(rt, r_parks, 1) < 0)  /* read by kernel stats at any time */
                    goto error;
                Py_CLEAR(task);
                continue;
            }
            kind = 3;
            value = y;
            break;
        }
        if (r == PYGEN_RETURN) {
            kind = 1;
            value = y;
            break;
        }
        /* PYGEN_ERROR: hand the exception to Python */
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        if (tb != NULL && ev != NULL)
            PyException_SetTraceback(ev, tb);
        Py_XDECREF(et);
        Py_XDECREF(tb);
        if (ev == NULL) {
            PyErr_SetString(PyExc_SystemError, "task raised no exception object");
            goto error;
        }
        kind = 2;
        value = ev;
        break;
    }
    if (kind == 0) {
        task = Py_None;
        Py_INCREF(task);
        value = Py_None;
        Py_INCREF(value);
    }
    return Py_BuildValue("(niNN)", steps, kind, task, value);
error:
    Py_XDECREF(task);
    return NULL;
}

/* ---- module functions ----------------------------------------------------------------------- */
static PyObject *
set_runtime(PyObject *mod, PyObject *rt)
{
    PyObject *old = (PyObject *)PyThread_tss_get(&rt_key);
    if (rt == Py_None)
        rt = NULL;
    else if (!configured || !PyObject_TypeCheck(rt, RuntimeType)) {
        PyErr_SetString(PyExc_TypeError, "set_runtime() needs a kcoro Runtime or None");
        return NULL;
    }
    Py_XINCREF(rt);
    if (PyThread_tss_set(&rt_key, rt) != 0) {
        Py_XDECREF(rt);
        PyErr_SetString(PyExc_RuntimeError, "kcoro._speedups: cannot set thread-local runtime");
        return NULL;
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *
configure(PyObject *mod, PyObject *args)
{
    PyObject *chan_cls, *ticket_cls, *task_cls, *scope_cls, *rt_cls, *token, *sized, *nbytes;
    PyObject *closed_exc;
    if (!PyArg_ParseTuple(args, "OOOOOO!O!OO:configure", &chan_cls, &ticket_cls, &task_cls,
                          &scope_cls, &rt_cls, &PyDict_Type, &token, &PySet_Type, &sized,
                          &nbytes, &closed_exc))
        return NULL;
    struct { PyObject *cls; const char *name; Py_ssize_t *off; } table[] = {
        {chan_cls, "_buf", &c_buf}, {chan_cls, "_cap", &c_cap}, {chan_cls, "_closed", &c_closed},
        {chan_cls, "_drop", &c_drop}, {chan_cls, "_nrecv", &c_nrecv},
        {chan_cls, "_nsend", &c_nsend}, {chan_cls, "_recvq", &c_recvq},
        {chan_cls, "_sendq", &c_sendq}, {chan_cls, "_peak", &c_peak},
        {chan_cls, "recvs", &c_recvs}, {chan_cls, "bytes_recv", &c_bytes_recv},
        {chan_cls, "_buf_bytes", &c_buf_bytes}, {chan_cls, "last_op_ns", &c_last_op_ns},
        {chan_cls, "first_op_ns", &c_first_op_ns}, {chan_cls, "undelivered", &c_undelivered},
        {chan_cls, "_lost_bytes", &c_lost_bytes},
        {chan_cls, "_on_undelivered", &c_on_undelivered},
        {ticket_cls, "_state", &t_state}, {ticket_cls, "_waker", &t_waker},
        {ticket_cls, "payload", &t_payload}, {ticket_cls, "item", &t_item},
        {ticket_cls, "linked", &t_linked},
        {task_cls, "_scope", &k_scope}, {task_cls, "_budget", &k_budget},
        {task_cls, "_tk", &k_tk}, {task_cls, "_on", &k_on}, {task_cls, "_rt", &k_rt},
        {task_cls, "_state", &k_state},
        {scope_cls, "_eff", &s_eff},
        {rt_cls, "current", &r_current}, {rt_cls, "_ready", &r_ready},
        {rt_cls, "_asleep", &r_asleep}, {rt_cls, "now_ns", &r_now_ns},
        {rt_cls, "parks", &r_parks}, {task_cls, "_coro", &k_coro},
        {task_cls, "_parked", &k_parked},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (slot_offset(table[i].cls, table[i].name, table[i].off) < 0)
            return NULL;
    if (!PyType_Check(ticket_cls) || !PyType_Check(task_cls)) {
        PyErr_SetString(PyExc_TypeError, "configure: Ticket and Task must be classes");
        return NULL;
    }
    if (!PyType_Check(chan_cls) || !PyType_Check(rt_cls)) {
        PyErr_SetString(PyExc_TypeError, "configure: Channel and Runtime must be classes");
        return NULL;
    }
    Py_INCREF(chan_cls);
    Py_XSETREF(ChannelType, (PyTypeObject *)chan_cls);
    Py_INCREF(rt_cls);
    Py_XSETREF(RuntimeType, (PyTypeObject *)rt_cls);
    Py_INCREF(ticket_cls);
    Py_XSETREF(TicketType, (PyTypeObject *)ticket_cls);
    Py_INCREF(task_cls);
    Py_XSETREF(TaskType, (PyTypeObject *)task_cls);
    Py_INCREF(token);
    Py_XSETREF(owner_dict, token);
    Py_INCREF(sized);
    Py_XSETREF(sized_set, sized);
    Py_INCREF(nbytes);
    Py_XSETREF(py_nbytes, nbytes);
    Py_INCREF(closed_exc);
    Py_XSETREF(ChannelClosedType, closed_exc);
    configured = 1;
    Py_RETURN_NONE;
}

/* ---- kcoro._payload.Arena's buddy allocator (``_take`` / ``_give``, branch for branch) --------
 * ``Buddy(meta, nblk, maxorder, shift)`` holds the arena's metadata buffer (the layout of
 * ``_payload._Meta``: u64 counters[16], u32 heads[48], then per min-block u32 gen, u32 nxt,
 * u32 prv, u16 holder, u8 order, u8 state, u8 flags).  The caller holds the arena's lock. */

enum { B_FREE = 1, B_ALLOC = 2 };
enum { BC_IN_USE, BC_PEAK, BC_BLOCKS, BC_ALLOCS, BC_FREES, BC_SPILLS, BC_FALLBACKS, BC_STALE };
#define B_NCOUNT 16
#define B_MAXORDERS 48
#define B_NOHOLDER 0xFFFF

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    int have_view;
    uint64_t *cnt;
    uint32_t *heads, *gen, *nxt, *prv;
    uint16_t *holder;
    uint8_t *order, *state, *flags;
    uint32_t nblk, maxorder, shift;
} BuddyObject;

static inline void
b_push(BuddyObject *b, uint32_t i, uint32_t o)
{
    uint32_t h = b->heads[o];
    b->state[i] = B_FREE;
    b->order[i] = (uint8_t)o;
    b->prv[i] = 0;
    b->nxt[i] = h;
    if (h)
        b->prv[h - 1] = i + 1;
    b->heads[o] = i + 1;
}

static inline void
b_unlink(BuddyObject *b, uint32_t i, uint32_t o)
{
    uint32_t p = b->prv[i], n = b->nxt[i];
    if (p)
        b->nxt[p - 1] = n;
    else
        b->heads[o] = n;
    if (n)
        b->prv[n - 1] = p;
}

static int
Buddy_init(BuddyObject *b, PyObject *args, PyObject *kwds)
{
    PyObject *meta;
    unsigned int nblk, maxorder, shift;
    if (!PyArg_ParseTuple(args, "OIII:Buddy", &meta, &nblk, &maxorder, &shift))
        return -1;
    if (b->have_view) {
        PyErr_SetString(PyExc_RuntimeError, "Buddy already initialized");
        return -1;
    }
    if (maxorder >= B_MAXORDERS || shift >= 32 || nblk == 0 || (1ULL << maxorder) > nblk) {
        PyErr_SetString(PyExc_ValueError, "Buddy: bad arena geometry");
        return -1;
    }
    if (PyObject_GetBuffer(meta, &b->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    b->have_view = 1;
    size_t need = B_NCOUNT * 8 + B_MAXORDERS * 4 + (size_t)nblk * (4 + 4 + 4 + 2 + 1 + 1 + 1);
    if ((size_t)b->view.len < need) {
        PyBuffer_Release(&b->view);
        b->have_view = 0;
        PyErr_SetString(PyExc_ValueError, "Buddy: metadata buffer too small for its geometry");
        return -1;
    }
    char *p = (char *)b->view.buf;
    b->cnt = (uint64_t *)p;
    p += B_NCOUNT * 8;
    b->heads = (uint32_t *)p;
    p += B_MAXORDERS * 4;
    b->gen = (uint32_t *)p;
    p += (size_t)nblk * 4;
    b->nxt = (uint32_t *)p;
    p += (size_t)nblk * 4;
    b->prv = (uint32_t *)p;
    p += (size_t)nblk * 4;
    b->holder = (uint16_t *)p;
    p += (size_t)nblk * 2;
    b->order = (uint8_t *)p;
    p += nblk;
    b->state = (uint8_t *)p;
    p += nblk;
    b->flags = (uint8_t *)p;
    b->nblk = nblk;
    b->maxorder = maxorder;
    b->shift = shift;
    return 0;
}

/* take(nbytes, holder, flags) -> head index of a new block, or -1 (no block fits) */
static PyObject *
Buddy_take(BuddyObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "take(nbytes, holder, flags)");
        return NULL;
    }
    if (!b->have_view) {
        PyErr_SetString(PyExc_ValueError, "Buddy not initialized");
        return NULL;
    }
    int over = 0;
    long long n = PyLong_AsLongLongAndOverflow(args[0], &over);
    long holder = PyLong_AsLong(args[1]), flags = PyLong_AsLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    if (holder < 0 || holder > 0xFFFF || flags < 0 || flags > 0xFF) {
        PyErr_Format(PyExc_ValueError, "Buddy.take: holder %ld or flags %ld out of range",
                     holder, flags);
        return NULL;
    }
    if (over > 0 || n > (1LL << 62))
        return PyLong_FromLong(-1);  /* larger than any arena: no block (a spill) */
    if (n < 1)
        n = 1;
    uint64_t blocks = ((uint64_t)n + (1ULL << b->shift) - 1) >> b->shift;
    uint32_t o = blocks <= 1 ? 0 : (uint32_t)(64 - __builtin_clzll(blocks - 1));
    if (o > b->maxorder)
        return PyLong_FromLong(-1);
    uint32_t k = o;
    while (k <= b->maxorder && !b->heads[k])
        k++;
    if (k > b->maxorder)
        return PyLong_FromLong(-1);
    uint32_t i = b->heads[k] - 1;
    b_unlink(b, i, k);
    while (k > o) { /* split, keeping the lower half */
        k--;
        b_push(b, i + (1u << k), k);
    }
    b->order[i] = (uint8_t)o;
    b->state[i] = B_ALLOC;
    b->holder[i] = (uint16_t)holder;
    b->flags[i] = (uint8_t)flags;
    uint64_t *c = b->cnt;
    c[BC_IN_USE] += (1ULL << b->shift) << o;
    if (c[BC_IN_USE] > c[BC_PEAK])
        c[BC_PEAK] = c[BC_IN_USE];
    c[BC_BLOCKS] += 1;
    c[BC_ALLOCS] += 1;
    return PyLong_FromUnsignedLong(i);
}

/* give(i, gen) -> True, or False if ``i`` is not an allocated block of generation ``gen``
 * (counted as stale) */
static PyObject *
Buddy_give(BuddyObject *b, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "give(i, gen)");
        return NULL;
    }
    if (!b->have_view) {
        PyErr_SetString(PyExc_ValueError, "Buddy not initialized");
        return NULL;
    }
    int over_i = 0, over_g = 0;
    long long i = PyLong_AsLongLongAndOverflow(args[0], &over_i);
    long long gen = PyLong_AsLongLongAndOverflow(args[1], &over_g);
    if (PyErr_Occurred())
        return NULL;
    uint64_t *c = b->cnt;
    if (over_i || over_g || i < 0 || i >= (long long)b->nblk || b->state[i] != B_ALLOC
            || (long long)b->gen[i] != gen) {
        c[BC_STALE] += 1;
        Py_RETURN_FALSE;
    }
    uint32_t j = (uint32_t)i, o = b->order[j], d;
    b->gen[j] = (uint32_t)((gen + 1) & 0xFFFFFFFF);
    b->holder[j] = B_NOHOLDER;
    b->flags[j] = 0;
    c[BC_IN_USE] -= (1ULL << b->shift) << o;
    c[BC_BLOCKS] -= 1;
    c[BC_FREES] += 1;
    while (o < b->maxorder) { /* merge with a free buddy of the same order */
        d = j ^ (1u << o);
        if ((uint64_t)d + (1u << o) > b->nblk || b->state[d] != B_FREE || b->order[d] != o)
            break;
        b_unlink(b, d, o);
        b->state[d > j ? d : j] = 0;
        j = d < j ? d : j;
        o++;
    }
    b_push(b, j, o);
    Py_RETURN_TRUE;
}

static PyObject *
Buddy_release(BuddyObject *b, PyObject *unused)
{
    if (b->have_view) {
        PyBuffer_Release(&b->view);
        b->have_view = 0;
    }
    Py_RETURN_NONE;
}

static void
Buddy_dealloc(BuddyObject *b)
{
    if (b->have_view)
        PyBuffer_Release(&b->view);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static PyMethodDef Buddy_methods[] = {
    {"take", (PyCFunction)(void (*)(void))Buddy_take, METH_FASTCALL,
     "take(nbytes, holder, flags) -> block index | -1: Arena._take (arena lock held)."},
    {"give", (PyCFunction)(void (*)(void))Buddy_give, METH_FASTCALL,
     "give(i, gen) -> bool: Arena._give (arena lock held)."},
    {"release", (PyCFunction)Buddy_release, METH_NOARGS,
     "Let go of the metadata buffer (before the arena unmaps it)."},
    {NULL}};

static PyTypeObject BuddyType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kcoro._speedups.Buddy",
    .tp_basicsize = sizeof(BuddyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The buddy allocator of a kcoro.Arena over its metadata buffer.",
    .tp_methods = Buddy_methods,
    .tp_init = (initproc)Buddy_init,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)Buddy_dealloc,
};

/* configure_payload(Payload): let the sections count payload bytes themselves (its ``nbytes``
 * slot) instead of sending every payload operation to the Python slow paths. */
static PyObject *
configure_payload(PyObject *mod, PyObject *cls)
{
    if (!PyType_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "configure_payload: Payload must be a class");
        return NULL;
    }
    if (slot_offset(cls, "nbytes", &p_nbytes) < 0)
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(PayloadType, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"configure_payload", configure_payload, METH_O,
     "configure_payload(Payload): payload sizes read from its nbytes slot."},
    {"configure", configure, METH_VARARGS,
     "configure(Channel, Ticket, Task, CancelScope, Runtime, owner, sized_types, nbytes, "
     "ChannelClosed)"},
    {"set_runtime", set_runtime, METH_O, "Set (or clear, with None) this thread's runtime."},
    {"run_steps", (PyCFunction)(void (*)(void))run_steps, METH_FASTCALL,
     "run_steps(rt, k) -> (steps, kind, task, value): the runtime's inner step loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "kcoro._speedups",
    "Optional C fast paths for kcoro channel operations in kcoro tasks.", -1, module_methods,
};

#define INTERN(var, s) do { if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL; } while (0)

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyThread_tss_create(&rt_key) != 0)
        return NULL;
    if (PyType_Ready(&OpType) < 0 || PyType_Ready(&ChanOpsType) < 0
            || PyType_Ready(&BuddyType) < 0)
        return NULL;
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return NULL;
    PyObject *deque = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque == NULL)
        return NULL;
    deque_append = PyObject_GetAttrString(deque, "append");
    deque_popleft = PyObject_GetAttrString(deque, "popleft");
    Py_DECREF(deque);
    if (deque_append == NULL || deque_popleft == NULL)
        return NULL;
    INTERN(s_send_slow, "_send_slow");
    INTERN(s_send_foreign, "_send_foreign");
    INTERN(s_try_send_slow, "_try_send_slow");
    INTERN(s_try_recv_slow, "_try_recv_slow");
    INTERN(s_recv_foreign, "_recv_foreign");
    INTERN(s_recv_slow, "_recv_slow");
    INTERN(s_park_failed, "_park_failed");
    INTERN(s_send_any, "_send_any");
    INTERN(s_recv_any, "_recv_any");
    INTERN(s_anext_any, "_anext_any");
    INTERN(s_send_blocking_slow, "_send_blocking_slow");
    INTERN(s_recv_blocking_slow, "_recv_blocking_slow");
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return NULL;
    get_running_loop = PyObject_GetAttrString(asyncio, "_get_running_loop");
    Py_DECREF(asyncio);
    if (get_running_loop == NULL)
        return NULL;
    INTERN(s_poke, "_poke");
    INTERN(s_wake_waker, "wake");
    INTERN(s_report, "_report");
    INTERN(s_abandon, "_abandon");
    INTERN(s_READY, "READY");
    INTERN(s_PARKED_str, "PARKED");
    budget_full = PyLong_FromLong(64);
    i_PARKED = PyLong_FromLong(1);
    i_READY = PyLong_FromLong(2);
    i_COMPLETED = PyLong_FromLong(3);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ChanOpsType);
    if (PyModule_AddObject(m, "ChanOps", (PyObject *)&ChanOpsType) < 0)
        return NULL;
    Py_INCREF(&OpType);
    if (PyModule_AddObject(m, "ChannelOp", (PyObject *)&OpType) < 0)
        return NULL;
    Py_INCREF(&BuddyType);
    if (PyModule_AddObject(m, "Buddy", (PyObject *)&BuddyType) < 0)
        return NULL;
    if (PyModule_AddIntConstant(m, "BUDGET", 64) < 0)  /* must equal _runtime.BUDGET */
        return NULL;
    return m;
}
