"""Other swapyards behind this one (issue 15): what each host says it runs, and
where a request goes. Each host is the only source of truth for its engines; this
package holds a cache of what they said (``view``), kept fresh by their event
streams, and pure decisions over it."""
