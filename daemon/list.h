/* Intrusive doubly-linked lists with a counted head: a state is a list. */
#ifndef PGC_DAEMON_LIST_H
#define PGC_DAEMON_LIST_H

#include <stddef.h>

typedef struct ListNode {
    struct ListNode *prev;
    struct ListNode *next;
} ListNode;

typedef struct List {
    ListNode head;
    int count;
} List;

static inline void list_init(List *l)
{
    l->head.prev = l->head.next = &l->head;
    l->count = 0;
}

static inline void list_append(List *l, ListNode *n)
{
    n->prev = l->head.prev;
    n->next = &l->head;
    l->head.prev->next = n;
    l->head.prev = n;
    l->count++;
}

static inline void list_remove(List *l, ListNode *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
    l->count--;
}

static inline ListNode *list_first(const List *l)
{
    return l->head.next == &l->head ? NULL : l->head.next;
}

static inline ListNode *list_last(const List *l)
{
    return l->head.prev == &l->head ? NULL : l->head.prev;
}

static inline ListNode *list_next(const List *l, const ListNode *n)
{
    return n->next == &l->head ? NULL : n->next;
}

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define list_entry(ln, type)            ((ln) ? container_of(ln, type, node) : NULL)

#endif
