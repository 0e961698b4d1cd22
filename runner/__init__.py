"""What runs inside one job's process: the entry (``entry``), the event publisher
(``publisher``), the job context (``context``) and the jobs themselves. Knows ``protocol`` only."""
