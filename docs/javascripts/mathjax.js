// MathJax 3 settings for the whole site.
// Guide and API pages: pymdownx.arithmatex (generic mode) writes \( \) and \[ \].
// Lesson pages (notebooks rendered by mkdocs-jupyter): the cells' own $ $ and $$ $$.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
  },
};

// Material for MkDocs swaps pages without a reload (instant navigation): typeset each new page.
document$.subscribe(() => {
  if (window.MathJax && MathJax.typesetPromise) {
    MathJax.typesetPromise();
  }
});
